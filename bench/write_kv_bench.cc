// The cost of WriteKv's ownership check (a slot's block must be held by a sequence or a cache
// entry): PagedKvCache::WriteKv against KvStorage::WriteTokens, which is what WriteKv did before
// the check, on the same cache, slots and data. Each iteration times one call of each, in
// alternating order (drift on a shared machine hits both alike); the counters are the medians
// (ns per call) and their ratio, check / no check (the time column includes both calls: read the
// counters).
//
// Cases: a decode step (one slot per sequence, each in its own block: one ref-count read per
// token) and a prefill chunk (contiguous slots: one read per block), for a large head geometry
// (8 KV heads x 128, float32: 8 KiB per token and layer) and a small one (2 x 64, bfloat16:
// 512 bytes), where the copy is cheapest next to the check.
// Build: cmake -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run build/<dir>/write_kv_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "alternating_timer.h"
#include "ferrum_kv/cache_manager.h"

namespace ferrum_kv {
namespace {

struct Geometry {
  int32_t num_kv_heads;
  int32_t head_dim;
  DType dtype;
};

constexpr Geometry kGeometries[] = {{8, 128, DType::kFloat32}, {2, 64, DType::kBFloat16}};

// range(0): geometry index; range(1): 0 = decode step of 256 sequences, 1 = one 512-token chunk.
void BM_WriteKvCheck(benchmark::State& state) {
  const Geometry g = kGeometries[state.range(0)];
  const bool decode = state.range(1) == 0;
  CacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = g.num_kv_heads;
  config.head_dim = g.head_dim;
  config.block_size = 16;
  config.num_blocks = 1024;
  config.dtype = g.dtype;
  PagedKvCache cache(config);
  std::vector<int32_t> slots;
  if (decode) {  // 256 sequences of 40 tokens; each writes its last token
    const std::vector<int32_t> prompt(40, 1);
    for (SeqId seq = 0; seq < 256; ++seq) {
      cache.AddSequence(seq, prompt.data(), int64_t(prompt.size()));
      slots.push_back(cache.SlotMapping(seq, 39, 40)[0]);
    }
  } else {
    const std::vector<int32_t> prompt(512, 1);
    cache.AddSequence(0, prompt.data(), 512);
    slots = cache.SlotMapping(0, 0, 512);
  }
  const int64_t n = int64_t(slots.size());
  // float32 sources for float32 storage, raw bits (storage dtype) otherwise: no conversion.
  const size_t bytes = size_t(n) * g.num_kv_heads * g.head_dim * DTypeSize(g.dtype);
  std::vector<uint8_t> k(bytes), v(bytes);
  std::mt19937 rng(1);
  for (size_t i = 0; i < bytes; ++i) {
    k[i] = uint8_t(rng() & 0x3f);  // small exponents: finite values in every dtype
    v[i] = uint8_t(rng() & 0x3f);
  }
  KvStorage& storage = *cache.storage();
  const auto [after, before] = bench::AlternatingMedians(
      state, [&] { cache.WriteKv(0, slots.data(), n, k.data(), v.data(), g.dtype); },
      [&] { storage.WriteTokens(0, slots.data(), n, k.data(), v.data(), g.dtype); });
  state.counters["no_check_ns"] = before;
  state.counters["check_ns"] = after;
  state.counters["ratio"] = after / before;
  state.counters["bytes_per_call"] = double(2 * bytes);
}
BENCHMARK(BM_WriteKvCheck)->ArgsProduct({{0, 1}, {0, 1}})->MinTime(1.0);

}  // namespace
}  // namespace ferrum_kv
