#include "kernels/attention_reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/kv_format.h"

namespace ferrum_kv::kernels {
namespace {

// Row (token offset in block, K or V, KV head) of a layer, as stored (dequantized: kv_format.h).
void ReadRow(const KvStorage& storage, int32_t block, int32_t layer, int kv, int32_t kv_head,
             int32_t offset, std::vector<double>& out) {
  const int32_t head_dim = storage.config().head_dim;
  const uint8_t* region = storage.BlockData(block) + storage.HeadRegionOffset(layer, kv, kv_head);
  const uint8_t* codes = region + storage.CodesOffset(offset);
  out.resize(head_dim);
  if (IsQuantized(storage.dtype())) {
    std::vector<float> row(head_dim);
    DequantizeRow(storage.dtype(), codes,
                  reinterpret_cast<const float*>(region + storage.ParamsOffset(offset)), head_dim,
                  row.data());
    std::copy(row.begin(), row.end(), out.begin());
    return;
  }
  for (int32_t c = 0; c < head_dim; ++c) {
    switch (storage.dtype()) {
      case DType::kFloat32: out[c] = reinterpret_cast<const float*>(codes)[c]; break;
      case DType::kFloat16: out[c] = HalfBitsToFloat(reinterpret_cast<const uint16_t*>(codes)[c]); break;
      default: out[c] = BFloat16BitsToFloat(reinterpret_cast<const uint16_t*>(codes)[c]); break;
    }
  }
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
    // Rows of (token, K or V, KV head), as float64.
    auto rows = [&](int32_t first, int32_t end, int kv, int32_t kv_head) {
      std::vector<std::vector<double>> values(end);
      for (int32_t t = first; t < end; ++t) {
        ReadRow(storage, table[t / config.block_size], layer, kv, kv_head, t % config.block_size,
                values[t]);
      }
      return values;
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
        const auto keys = rows(first, visible, 0, kv_head);
        const auto values = rows(first, visible, 1, kv_head);
        double max_score = -INFINITY;
        for (int32_t t = first; t < visible; ++t) {
          double dot = 0.0;
          for (int32_t c = 0; c < head_dim; ++c) dot += double{q_row[c]} * keys[t][c];
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
            value += weights[t] * values[t][c];
          }
          out_row[c] = static_cast<float>(value / total);
        }
      }
    }
  }
}

}  // namespace ferrum_kv::kernels
