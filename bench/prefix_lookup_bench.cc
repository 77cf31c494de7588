// A full prefix hit in C++ alone (no Python): AddSequence of a 32K-token prompt whose 2048 blocks
// are all cached (keys, lookup, references), then FreeSequence outside the timer. Build: cmake
// -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run build/<dir>/prefix_lookup_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "ferrum_kv/cache_manager.h"

namespace ferrum_kv {
namespace {

constexpr int32_t kBlockSize = 16;
constexpr int64_t kNumTokens = 32768;

void BM_FullHitAddSequence(benchmark::State& state) {
  CacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 1;
  config.head_dim = 1;
  config.block_size = kBlockSize;
  config.num_blocks = int32_t(kNumTokens / kBlockSize + 8);
  config.enable_prefix_caching = true;
  PagedKvCache cache(config);
  std::mt19937 rng(0);
  std::vector<int32_t> prompt(kNumTokens);
  for (int32_t& token : prompt) token = int32_t(rng() >> 1);
  cache.AddSequence(0, prompt.data(), kNumTokens);
  cache.MarkComputed(0, kNumTokens);
  cache.FreeSequence(0);
  SeqId next = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(cache.AddSequence(next, prompt.data(), kNumTokens));
    state.PauseTiming();
    cache.FreeSequence(next++);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
}
BENCHMARK(BM_FullHitAddSequence);

}  // namespace
}  // namespace ferrum_kv
