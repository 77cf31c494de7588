// One decode step's bookkeeping in C++ alone (no Python): AppendBatch of one token to each of 256
// running sequences (prompts of 100-1000 distinct random tokens), with prefix caching off and on
// (nothing ever hits: the cost of publishing the blocks that fill). Runs until the cache is close
// to full, then starts over with a fresh cache outside the timer.
//
// BM_AppendBatch times each setting on its own. BM_CachingAB alternates the two settings step by
// step (so that drift on a shared machine hits both alike) and, before each step, streams
// through range(0) KiB of other memory, as a serving engine's own work between two steps does
// (it leaves the cache's lines in L3 or DRAM); it reports the medians of the steps and of the
// per-pair differences (on - off) as counters (its time column includes building the caches:
// read the counters). Build: cmake -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run
// build/<dir>/decode_step_bench.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "ferrum_kv/cache_manager.h"

namespace ferrum_kv {
namespace {

constexpr int64_t kSeqs = 256;
constexpr int32_t kStepsPerCache = 1024;

// Both settings get the same prompts from the same rng state.
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

double Median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

void BM_CachingAB(benchmark::State& state) {
  std::vector<char> other_memory(size_t(state.range(0)) * 1024 + 1, 1);
  std::vector<SeqId> ids(kSeqs);
  for (SeqId id = 0; id < kSeqs; ++id) ids[id] = id;
  const std::vector<int32_t> tokens(kSeqs, 1);
  std::unique_ptr<PagedKvCache> cache[2];  // [0]: caching off, [1]: on
  int32_t steps = kStepsPerCache;
  uint32_t seed = 0;
  std::vector<double> ns[2], diff;
  for (auto _ : state) {
    if (steps == kStepsPerCache) {
      for (int on = 0; on < 2; ++on) {
        std::mt19937 rng(seed);
        cache[on] = FilledCache(on == 1, &rng);
      }
      ++seed;
      steps = 0;
    }
    double step_ns[2];
    for (int k = 0; k < 2; ++k) {
      const int on = (steps + k) % 2;  // alternate which goes first
      for (size_t i = 0; i < other_memory.size(); i += 64) ++other_memory[i];
      const auto start = std::chrono::steady_clock::now();
      cache[on]->AppendBatch(ids.data(), tokens.data(), kSeqs);
      step_ns[on] = std::chrono::duration<double, std::nano>(
                        std::chrono::steady_clock::now() - start).count();
      ns[on].push_back(step_ns[on]);
    }
    diff.push_back(step_ns[1] - step_ns[0]);
    ++steps;
  }
  benchmark::DoNotOptimize(other_memory.data());
  state.counters["off_ns"] = Median(ns[0]);
  state.counters["on_ns"] = Median(ns[1]);
  state.counters["on_minus_off_ns"] = Median(diff);
}
BENCHMARK(BM_CachingAB)->Arg(0)->Arg(1536)->Iterations(20 * kStepsPerCache);

}  // namespace
}  // namespace ferrum_kv
