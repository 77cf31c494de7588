// One decode step's bookkeeping in C++ alone (no Python): AppendBatch of one token to each of 256
// running sequences (prompts of 100-1000 distinct random tokens), with prefix caching off and on
// (nothing ever hits: the cost of publishing the blocks that fill). Runs until the cache is close
// to full, then starts over with a fresh cache outside the timer. Build: cmake
// -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run build/<dir>/decode_step_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "ferrum_kv/cache_manager.h"

namespace ferrum_kv {
namespace {

constexpr int64_t kSeqs = 256;
constexpr int32_t kStepsPerCache = 1024;

std::unique_ptr<PagedKvCache> FilledCache(bool prefix_caching, std::mt19937* rng) {
  CacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 1;
  config.head_dim = 1;
  config.block_size = 16;
  config.num_blocks = int32_t(kSeqs * ((1000 + kStepsPerCache) / 16 + 2));
  config.enable_prefix_caching = prefix_caching;
  auto cache = std::make_unique<PagedKvCache>(config);
  for (SeqId id = 0; id < kSeqs; ++id) {
    std::vector<int32_t> prompt(100 + (*rng)() % 900);
    for (int32_t& token : prompt) token = int32_t((*rng)() >> 1);
    cache->AddSequence(id, prompt.data(), int64_t(prompt.size()));
    cache->MarkComputed(id, int64_t(prompt.size()));
  }
  return cache;
}

void BM_AppendBatch(benchmark::State& state) {
  const bool prefix_caching = state.range(0) != 0;
  std::mt19937 rng(0);
  std::vector<SeqId> ids(kSeqs);
  for (SeqId id = 0; id < kSeqs; ++id) ids[id] = id;
  const std::vector<int32_t> tokens(kSeqs, 1);
  std::unique_ptr<PagedKvCache> cache;
  int32_t steps = kStepsPerCache;
  for (auto _ : state) {
    if (steps == kStepsPerCache) {
      state.PauseTiming();
      cache = FilledCache(prefix_caching, &rng);
      steps = 0;
      state.ResumeTiming();
    }
    cache->AppendBatch(ids.data(), tokens.data(), kSeqs);
    ++steps;
  }
  state.SetItemsProcessed(state.iterations() * kSeqs);
  state.SetLabel(prefix_caching ? "prefix caching" : "no caching");
}
BENCHMARK(BM_AppendBatch)->Arg(0)->Arg(1);

}  // namespace
}  // namespace ferrum_kv
