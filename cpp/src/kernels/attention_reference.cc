#include "kernels/attention_reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ferrum_kv/dtype_convert.h"

namespace ferrum_kv::kernels {
namespace {

double ElementAt(const uint8_t* data, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kFloat32: return reinterpret_cast<const float*>(data)[index];
    case DType::kFloat16: return HalfBitsToFloat(reinterpret_cast<const uint16_t*>(data)[index]);
    case DType::kBFloat16:
      return BFloat16BitsToFloat(reinterpret_cast<const uint16_t*>(data)[index]);
  }
  return 0.0;
}

}  // namespace

void PagedAttentionReference(const float* q, int32_t num_q_heads, const KvStorage& storage,
                             int32_t layer, const PagedBatch& batch, float scale, float* out,
                             const AttentionOptions& options) {
  const CacheConfig& config = storage.config();
  const int32_t head_dim = config.head_dim;
  const int32_t group = num_q_heads / config.num_kv_heads;
  std::vector<double> weights;
  int64_t row = 0;  // query token index into q / out
  for (int32_t i = 0; i < batch.batch_size; ++i) {
    const int32_t context = batch.context_lens[i];
    const int32_t queries = batch.query_lens ? batch.query_lens[i] : 1;
    const int32_t* table = batch.block_tables + int64_t{i} * batch.max_blocks;
    // Element index of (token, K or V, KV head, dim 0) in the arena.
    auto element = [&](int32_t token, int kv, int32_t kv_head) {
      return int64_t{table[token / config.block_size]} * storage.BlockStride() +
             int64_t{layer} * storage.LayerStride() + kv * storage.KvStride() +
             kv_head * storage.HeadStride() + (token % config.block_size) * storage.TokenStride();
    };
    for (int32_t j = 0; j < queries; ++j, ++row) {
      const int32_t position = context - queries + j;
      const int32_t visible = position + 1;
      // Keys [first, visible): all of them, or the last sliding_window.
      const int32_t first =
          options.sliding_window > 0 ? std::max(0, visible - options.sliding_window) : 0;
      weights.assign(visible, 0.0);
      for (int32_t h = 0; h < num_q_heads; ++h) {
        const float* q_row = q + (row * num_q_heads + h) * head_dim;
        const int32_t kv_head = h / group;
        double max_score = -INFINITY;
        for (int32_t t = first; t < visible; ++t) {
          const int64_t base = element(t, 0, kv_head);
          double dot = 0.0;
          for (int32_t c = 0; c < head_dim; ++c) {
            dot += double{q_row[c]} * ElementAt(storage.Data(), storage.dtype(), base + c);
          }
          double logit = dot * double{scale};
          if (options.soft_cap > 0.0f) {
            logit = double{options.soft_cap} * std::tanh(logit / double{options.soft_cap});
          }
          if (options.alibi_slopes) logit += double{options.alibi_slopes[h]} * (t - position);
          weights[t] = logit;
          max_score = std::max(max_score, weights[t]);
        }
        double total = 0.0;
        for (int32_t t = first; t < visible; ++t) {
          total += (weights[t] = std::exp(weights[t] - max_score));
        }
        float* out_row = out + (row * num_q_heads + h) * head_dim;
        for (int32_t c = 0; c < head_dim; ++c) {
          double value = 0.0;
          for (int32_t t = first; t < visible; ++t) {
            value += weights[t] * ElementAt(storage.Data(), storage.dtype(),
                                            element(t, 1, kv_head) + c);
          }
          out_row[c] = static_cast<float>(value / total);
        }
      }
    }
  }
}

}  // namespace ferrum_kv::kernels
