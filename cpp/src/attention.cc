#include "ferrum_kv/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ferrum_kv/parallel.h"
#include "ferrum_kv/support/check.h"
#include "kernels/attention_reference.h"
#include "kernels/attention_tile.h"

namespace ferrum_kv {
namespace {

using kernels::AttentionTile;
using kernels::kMaxTileRows;
using TileFunction = void (*)(const AttentionTile&);

// Flash-decoding policy: when a batch has fewer than kTilesPerThread tiles per thread, contexts
// are cut into key ranges of at least kMinSplitKeys keys (rounded up to whole blocks) so every
// thread has work; partial softmax states are then merged. Smaller ranges would spend more on the
// merge and on per-range overhead than they gain.
constexpr int64_t kTilesPerThread = 4;
constexpr int32_t kMinSplitKeys = 512;

// Whether this CPU has the instructions of the AVX-512 fast kernels (AttentionTileAvx512Fast and
// AttentionTileAvx512QuantFast; kFp16: AttentionTileAvx512Fp8Fast).
template <bool kFp16>
bool Avx512FastInstructions() {
#if defined(__x86_64__) || defined(__i386__)
  if (!AttentionIsaSupported(AttentionIsa::kAvx512)) return false;
  if constexpr (kFp16) return __builtin_cpu_supports("avx512fp16");
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

// isa is resolved (not kAuto, not kReference).
TileFunction TileFunctionFor(AttentionIsa isa, AttentionPrecision precision, DType dtype) {
  if (precision == AttentionPrecision::kFast && AttentionFastSupported(isa, dtype)) {
    if (kernels::HasAvx512Fp16Kernel(dtype)) return kernels::AttentionTileAvx512Fp8Fast;
    return IsQuantized(dtype) ? kernels::AttentionTileAvx512QuantFast
                              : kernels::AttentionTileAvx512Fast;
  }
  switch (isa) {
    case AttentionIsa::kAvx512: return kernels::AttentionTileAvx512;
    case AttentionIsa::kAvx2: return kernels::AttentionTileAvx2;
    default: return kernels::AttentionTilePortable;
  }
}

AttentionIsa ResolveIsa(AttentionIsa isa) {
  FKV_CHECK_ARG(AttentionIsaSupported(isa),
                "attention kernel '" << AttentionIsaName(isa) << "' is not supported by this CPU");
  return isa == AttentionIsa::kAuto ? BestAttentionIsa() : isa;
}

// Throws for everything the contract in attention.h rules out; afterwards every table entry the
// kernels read is a valid block id.
void Validate(const float* q, int64_t num_query_tokens, int32_t num_q_heads,
              const KvStorage& storage, int32_t layer, const PagedBatch& batch, float scale,
              const float* out, const AttentionOptions& options) {
  const CacheConfig& config = storage.config();
  FKV_CHECK_INDEX(layer >= 0 && layer < config.num_layers,
                  "layer " << layer << " out of range [0, " << config.num_layers << ")");
  FKV_CHECK_ARG(num_q_heads >= 1 && num_q_heads % config.num_kv_heads == 0,
                "num_q_heads (" << num_q_heads << ") must be a positive multiple of num_kv_heads ("
                                << config.num_kv_heads << ")");
  FKV_CHECK_ARG(std::isfinite(scale), "scale must be finite, got " << scale);
  FKV_CHECK_ARG(batch.batch_size >= 0, "batch size must be >= 0, got " << batch.batch_size);
  FKV_CHECK_ARG(batch.max_blocks >= 0, "max_blocks must be >= 0, got " << batch.max_blocks);
  FKV_CHECK_ARG(options.sliding_window >= 0,
                "sliding_window must be >= 0 (0 = off), got " << options.sliding_window);
  FKV_CHECK_ARG(std::isfinite(options.soft_cap) && options.soft_cap >= 0.0f,
                "soft_cap must be finite and >= 0 (0 = off), got " << options.soft_cap);
  if (options.alibi_slopes) {
    for (int32_t h = 0; h < num_q_heads; ++h) {
      FKV_CHECK_ARG(std::isfinite(options.alibi_slopes[h]),
                    "alibi_slopes[" << h << "] must be finite, got " << options.alibi_slopes[h]);
    }
  }
  if (batch.batch_size == 0) {
    FKV_CHECK_ARG(num_query_tokens == 0, "an empty batch has no query tokens, got "
                                             << num_query_tokens);
    return;
  }
  FKV_CHECK_ARG(batch.block_tables && batch.context_lens, "block_tables and context_lens needed");
  int64_t total_queries = 0;
  for (int32_t i = 0; i < batch.batch_size; ++i) {
    const int32_t context = batch.context_lens[i];
    const int64_t capacity = int64_t{batch.max_blocks} * config.block_size;
    FKV_CHECK_ARG(context >= 1 && context <= capacity,
                  "context_lens[" << i << "] = " << context << " must be in [1, " << capacity
                                  << "] (max_blocks " << batch.max_blocks << " * block_size "
                                  << config.block_size << ")");
    const int32_t queries = batch.query_lens ? batch.query_lens[i] : 1;
    FKV_CHECK_ARG(queries >= 1 && queries <= context,
                  "query_lens[" << i << "] = " << queries << " must be in [1, context_lens[" << i
                                << "] = " << context << "]");
    total_queries += queries;
    const int32_t* table = batch.block_tables + int64_t{i} * batch.max_blocks;
    const int32_t used = (context + config.block_size - 1) / config.block_size;
    for (int32_t j = 0; j < used; ++j) {
      FKV_CHECK_ARG(table[j] >= 0 && table[j] < storage.num_blocks(),
                    "block_tables[" << i << ", " << j << "] = " << table[j]
                                    << " is not a block id in [0, " << storage.num_blocks()
                                    << ") (sequence " << i << " has " << context
                                    << " tokens, so blocks 0.." << used - 1 << " are read)");
    }
  }
  FKV_CHECK_ARG(total_queries == num_query_tokens,
                "q has " << num_query_tokens << " query tokens but sum(query_lens) = "
                         << total_queries);
  FKV_CHECK_ARG(q && out, "q and out must not be null");
  const auto bytes = static_cast<uintptr_t>(num_query_tokens * num_q_heads * config.head_dim *
                                            int64_t{sizeof(float)});
  const auto q_address = reinterpret_cast<uintptr_t>(q);
  const auto out_address = reinterpret_cast<uintptr_t>(out);
  FKV_CHECK_ARG(out_address + bytes <= q_address || q_address + bytes <= out_address,
                "q and out must not overlap");
}

// Query rows (token, query head) of one sequence that share one KV head.
struct TileSpec {
  int32_t seq;
  int32_t kv_head;
  int32_t token_begin, token_end;  // query tokens of the sequence, [0, query_lens[seq])
  int32_t head_begin, head_end;    // query heads within the KV head's group
  int64_t first_row;               // index of the sequence's first query token in q
  int32_t key_begin;               // first key any token sees (sliding window; else 0)
  int32_t key_end;                 // keys the last token sees
  int32_t num_splits;
  int64_t scratch_offset;          // where split partial states start (num_splits > 1)

  int32_t num_rows() const { return (token_end - token_begin) * (head_end - head_begin); }
};

struct WorkItem {
  int32_t tile;
  int32_t split;
  int32_t key_begin, key_end;
};

class Plan {
 public:
  Plan(int32_t num_q_heads, const KvStorage& storage, const PagedBatch& batch, int32_t threads,
       int32_t sliding_window)
      : config_(storage.config()),
        num_q_heads_(num_q_heads),
        group_(num_q_heads / config_.num_kv_heads),
        window_(sliding_window) {
    const int32_t heads_per_tile = std::min(group_, kMaxTileRows);
    const int32_t tokens_per_tile = std::max(1, kMaxTileRows / group_);
    int64_t first_row = 0;
    for (int32_t i = 0; i < batch.batch_size; ++i) {
      const int32_t queries = batch.query_lens ? batch.query_lens[i] : 1;
      const int32_t context = batch.context_lens[i];
      for (int32_t h = 0; h < config_.num_kv_heads; ++h) {
        for (int32_t t0 = 0; t0 < queries; t0 += tokens_per_tile) {
          const int32_t t1 = std::min(queries, t0 + tokens_per_tile);
          for (int32_t g0 = 0; g0 < group_; g0 += heads_per_tile) {
            // The first token's window start (0 without a window): every earlier key is skipped.
            const int32_t first_position = context - queries + t0;
            const int32_t key_begin = window_ > 0 ? std::max(0, first_position + 1 - window_) : 0;
            tiles_.push_back({i, h, t0, t1, g0, std::min(group_, g0 + heads_per_tile), first_row,
                              key_begin, context - queries + t1, 1, 0});
          }
        }
      }
      first_row += queries;
    }
    const int64_t wanted = kTilesPerThread * threads;
    const int64_t splits_wanted = (wanted + int64_t(tiles_.size()) - 1) / int64_t(tiles_.size());
    for (int32_t index = 0; index < int32_t(tiles_.size()); ++index) {
      TileSpec& tile = tiles_[index];
      const int64_t max_splits =
          std::max<int64_t>(1, (tile.key_end - tile.key_begin) / kMinSplitKeys);
      tile.num_splits = static_cast<int32_t>(std::min(splits_wanted, max_splits));
      // Ranges of whole blocks from the block holding key_begin.
      const int32_t first_key = tile.key_begin / config_.block_size * config_.block_size;
      const int32_t blocks =
          (tile.key_end - first_key + config_.block_size - 1) / config_.block_size;
      const int32_t blocks_per_split = (blocks + tile.num_splits - 1) / tile.num_splits;
      const int32_t keys_per_split = blocks_per_split * config_.block_size;
      tile.num_splits = (tile.key_end - first_key + keys_per_split - 1) / keys_per_split;
      if (tile.num_splits > 1) {
        tile.scratch_offset = scratch_floats_;
        scratch_floats_ += int64_t{tile.num_splits} * tile.num_rows() * (config_.head_dim + 2);
      }
      for (int32_t s = 0; s < tile.num_splits; ++s) {
        items_.push_back({index, s, std::max(tile.key_begin, first_key + s * keys_per_split),
                          std::min(tile.key_end, first_key + (s + 1) * keys_per_split)});
      }
    }
  }

  const std::vector<TileSpec>& tiles() const { return tiles_; }
  const std::vector<WorkItem>& items() const { return items_; }
  int64_t scratch_floats() const { return scratch_floats_; }

  // Offset in q / out (elements) of row r of tile: rows run over (token, head) with heads fastest.
  int64_t RowOffset(const TileSpec& tile, int32_t r) const {
    const int32_t heads = tile.head_end - tile.head_begin;
    const int64_t token = tile.first_row + tile.token_begin + r / heads;
    const int32_t head = tile.kv_head * group_ + tile.head_begin + r % heads;
    return (token * num_q_heads_ + head) * config_.head_dim;
  }
  // Causal limit of row r: the token's position + 1.
  int32_t RowEnd(const TileSpec& tile, int32_t r) const {
    const int32_t heads = tile.head_end - tile.head_begin;
    return tile.key_end - (tile.token_end - tile.token_begin) + r / heads + 1;
  }
  // Window start of row r (sliding window only): its position + 1 - window, at least 0.
  int32_t RowBegin(const TileSpec& tile, int32_t r) const {
    return std::max(0, RowEnd(tile, r) - window_);
  }
  // Query head of row r.
  int32_t RowHead(const TileSpec& tile, int32_t r) const {
    const int32_t heads = tile.head_end - tile.head_begin;
    return tile.kv_head * group_ + tile.head_begin + r % heads;
  }

 private:
  const CacheConfig& config_;
  const int32_t num_q_heads_;
  const int32_t group_;
  const int32_t window_;
  std::vector<TileSpec> tiles_;
  std::vector<WorkItem> items_;
  int64_t scratch_floats_ = 0;
};

// Per-thread buffers for one tile: scaled q rows, their limits, and (unsplit tiles) the state.
struct ThreadBuffers {
  explicit ThreadBuffers(int32_t head_dim)
      : q(kMaxTileRows * head_dim), acc(kMaxTileRows * head_dim), max(kMaxTileRows),
        sum(kMaxTileRows), slope(kMaxTileRows), row_end(kMaxTileRows), row_begin(kMaxTileRows) {}
  std::vector<float> q, acc, max, sum, slope;
  std::vector<int32_t> row_end, row_begin;
};

void RunTiles(const float* q, int32_t num_q_heads, const KvStorage& storage, int32_t layer,
              const PagedBatch& batch, float scale, float* out, TileFunction tile_function,
              int32_t threads, const AttentionOptions& options) {
  const CacheConfig& config = storage.config();
  const int32_t d = config.head_dim;
  const Plan plan(num_q_heads, storage, batch, threads, options.sliding_window);
  const auto& tiles = plan.tiles();
  const auto& items = plan.items();
  threads = static_cast<int32_t>(std::min<int64_t>(threads, int64_t(items.size())));
  std::vector<float> scratch(plan.scratch_floats());
  std::vector<ThreadBuffers> buffers(threads, ThreadBuffers(d));
  const int64_t num_items = int64_t(items.size());

  ParallelFor(num_items, threads, [&](int32_t thread, int64_t w) {
    ThreadBuffers& buffer = buffers[thread];
    const WorkItem& item = items[w];
    const TileSpec& spec = tiles[item.tile];
    const int32_t rows = spec.num_rows();
    for (int32_t r = 0; r < rows; ++r) {
      const float* src = q + plan.RowOffset(spec, r);
      for (int32_t c = 0; c < d; ++c) buffer.q[r * d + c] = src[c] * scale;
      buffer.row_end[r] = plan.RowEnd(spec, r);
      if (options.sliding_window > 0) buffer.row_begin[r] = plan.RowBegin(spec, r);
      if (options.alibi_slopes) buffer.slope[r] = options.alibi_slopes[plan.RowHead(spec, r)];
    }
    AttentionTile tile;
    tile.q = buffer.q.data();
    tile.row_end = buffer.row_end.data();
    tile.num_rows = rows;
    tile.key_begin = item.key_begin;
    tile.key_end = item.key_end;
    tile.block_table = batch.block_tables + int64_t{spec.seq} * batch.max_blocks;
    tile.k_base = storage.Data() + storage.HeadRegionOffset(layer, 0, spec.kv_head);
    tile.v_base = storage.Data() + storage.HeadRegionOffset(layer, 1, spec.kv_head);
    tile.block_bytes = storage.bytes_per_block();
    tile.params_offset = storage.head_region().params_offset;
    tile.block_size = config.block_size;
    tile.head_dim = d;
    tile.dtype = storage.dtype();
    tile.row_begin = options.sliding_window > 0 ? buffer.row_begin.data() : nullptr;
    tile.soft_cap = options.soft_cap;
    tile.row_slope = options.alibi_slopes ? buffer.slope.data() : nullptr;
    if (spec.num_splits == 1) {
      tile.acc = buffer.acc.data();
      tile.max = buffer.max.data();
      tile.sum = buffer.sum.data();
      tile_function(tile);
      for (int32_t r = 0; r < rows; ++r) {
        float* dst = out + plan.RowOffset(spec, r);
        const float inverse = 1.0f / buffer.sum[r];
        for (int32_t c = 0; c < d; ++c) dst[c] = buffer.acc[r * d + c] * inverse;
      }
    } else {
      float* state = scratch.data() + spec.scratch_offset +
                     int64_t{item.split} * rows * (d + 2);
      tile.acc = state;
      tile.max = state + int64_t{rows} * d;
      tile.sum = tile.max + rows;
      tile_function(tile);
    }
  });

  // Merge the partial states of split tiles: out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
  const bool any_split = std::any_of(tiles.begin(), tiles.end(),
                                     [](const TileSpec& spec) { return spec.num_splits > 1; });
  if (!any_split) return;
  ParallelFor(int64_t(tiles.size()), threads, [&](int32_t, int64_t index) {
    const TileSpec& spec = tiles[index];
    if (spec.num_splits == 1) return;
    const int32_t rows = spec.num_rows();
    const int64_t state_size = int64_t{rows} * (d + 2);
    const float* states = scratch.data() + spec.scratch_offset;
    for (int32_t r = 0; r < rows; ++r) {
      float global_max = -std::numeric_limits<float>::infinity();
      for (int32_t s = 0; s < spec.num_splits; ++s) {
        global_max = std::max(global_max, states[s * state_size + int64_t{rows} * d + r]);
      }
      float* dst = out + plan.RowOffset(spec, r);
      std::fill(dst, dst + d, 0.0f);
      float total = 0.0f;
      for (int32_t s = 0; s < spec.num_splits; ++s) {
        const float* state = states + s * state_size;
        const float split_max = state[int64_t{rows} * d + r];
        if (split_max == -std::numeric_limits<float>::infinity()) continue;  // saw no key
        const float weight = std::exp(split_max - global_max);
        total += weight * state[int64_t{rows} * d + rows + r];
        for (int32_t c = 0; c < d; ++c) dst[c] += weight * state[int64_t{r} * d + c];
      }
      const float inverse = 1.0f / total;
      for (int32_t c = 0; c < d; ++c) dst[c] *= inverse;
    }
  });
}

void PagedAttention(const float* q, int64_t num_query_tokens, int32_t num_q_heads,
                    const KvStorage& storage, int32_t layer, const PagedBatch& batch, float scale,
                    float* out, const AttentionOptions& options) {
  FKV_CHECK_ARG(options.precision == AttentionPrecision::kExact ||
                    options.precision == AttentionPrecision::kFast,
                "unknown attention precision " << int{static_cast<uint8_t>(options.precision)});
  const AttentionIsa isa = ResolveIsa(options.isa);
  const int32_t threads = ResolveNumThreads(options.num_threads);
  Validate(q, num_query_tokens, num_q_heads, storage, layer, batch, scale, out, options);
  if (batch.batch_size == 0) return;
  if (isa == AttentionIsa::kReference) {
    kernels::PagedAttentionReference(q, num_q_heads, storage, layer, batch, scale, out, options);
    return;
  }
  RunTiles(q, num_q_heads, storage, layer, batch, scale, out,
           TileFunctionFor(isa, options.precision, storage.dtype()), threads, options);
}

}  // namespace

const char* AttentionIsaName(AttentionIsa isa) {
  switch (isa) {
    case AttentionIsa::kAuto: return "auto";
    case AttentionIsa::kReference: return "reference";
    case AttentionIsa::kPortable: return "portable";
    case AttentionIsa::kAvx2: return "avx2";
    case AttentionIsa::kAvx512: return "avx512";
  }
  return "unknown";
}

AttentionIsa ParseAttentionIsa(const std::string& name) {
  for (AttentionIsa isa : {AttentionIsa::kAuto, AttentionIsa::kReference, AttentionIsa::kPortable,
                           AttentionIsa::kAvx2, AttentionIsa::kAvx512}) {
    if (name == AttentionIsaName(isa)) return isa;
  }
  FKV_THROW(InvalidArgument, "unknown attention kernel '"
                                 << name << "' (expected auto, reference, portable, avx2 or avx512)");
}

bool AttentionIsaSupported(AttentionIsa isa) {
  switch (isa) {
    case AttentionIsa::kAvx512:
#if defined(__x86_64__) || defined(__i386__)
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    case AttentionIsa::kAvx2:
#if defined(__x86_64__) || defined(__i386__)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
#else
      return false;
#endif
    default: return true;
  }
}

const char* AttentionPrecisionName(AttentionPrecision precision) {
  switch (precision) {
    case AttentionPrecision::kExact: return "exact";
    case AttentionPrecision::kFast: return "fast";
  }
  return "unknown";
}

AttentionPrecision ParseAttentionPrecision(const std::string& name) {
  for (AttentionPrecision precision : {AttentionPrecision::kExact, AttentionPrecision::kFast}) {
    if (name == AttentionPrecisionName(precision)) return precision;
  }
  FKV_THROW(InvalidArgument, "unknown attention precision '" << name
                                                              << "' (expected exact or fast)");
}

bool AttentionFastSupported(AttentionIsa isa, DType dtype) {
  if (isa == AttentionIsa::kAuto) isa = BestAttentionIsa();
  if (isa != AttentionIsa::kAvx512) return false;
  return (kernels::HasAvx512FastKernel(dtype) && Avx512FastInstructions<false>()) ||
         (kernels::HasAvx512Fp16Kernel(dtype) && Avx512FastInstructions<true>());
}

AttentionIsa BestAttentionIsa() {
  if (AttentionIsaSupported(AttentionIsa::kAvx512)) return AttentionIsa::kAvx512;
  if (AttentionIsaSupported(AttentionIsa::kAvx2)) return AttentionIsa::kAvx2;
  return AttentionIsa::kPortable;
}

void PagedAttentionDecode(const float* q, int32_t num_q_heads, const KvStorage& storage,
                          int32_t layer, const PagedBatch& batch, float scale, float* out,
                          const AttentionOptions& options) {
  FKV_CHECK_ARG(batch.query_lens == nullptr, "decode takes no query_lens");
  PagedAttention(q, batch.batch_size, num_q_heads, storage, layer, batch, scale, out, options);
}

void PagedAttentionPrefill(const float* q, int64_t num_query_tokens, int32_t num_q_heads,
                           const KvStorage& storage, int32_t layer, const PagedBatch& batch,
                           float scale, float* out, const AttentionOptions& options) {
  FKV_CHECK_ARG(batch.query_lens != nullptr || batch.batch_size == 0,
                "prefill needs query_lens");
  PagedAttention(q, num_query_tokens, num_q_heads, storage, layer, batch, scale, out, options);
}

}  // namespace ferrum_kv
