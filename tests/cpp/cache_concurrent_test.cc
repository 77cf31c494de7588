// Many threads drive one PagedKvCache at once, each with its own random operation driver
// (fuzz/cache_fuzzer.h, shared mode: its own seq_ids, the model checks and CheckInvariants after
// every operation), so that prefix hits, evictions, copy-on-write and swaps of different threads
// interleave. CI runs it under ThreadSanitizer (ctest -R Concurrent); FKV_STRESS_OPS (per thread)
// and FKV_STRESS_THREADS run a longer soak (tests/fuzz_long.sh).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fuzz/cache_fuzzer.h"
#include "fuzz/env.h"

namespace ferrum_kv::fuzz {
namespace {

class CacheConcurrentTest : public testing::TestWithParam<EvictionPolicyKind> {};

TEST_P(CacheConcurrentTest, ThreadsDrivingOneCacheKeepItConsistent) {
  CacheConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 1;
  config.head_dim = 4;
  config.block_size = 4;
  config.num_blocks = 96;
  config.num_host_blocks = 48;
  config.dtype = DType::kBFloat16;
  config.enable_prefix_caching = true;
  config.enable_kv_events = true;
  config.max_prompt_logits = 4;
  config.eviction_policy = GetParam();
  PagedKvCache cache(config);
  // The callback runs with the cache's mutex released: it may call back into the cache.
  std::atomic<int64_t> notifications{0};
  cache.SetPressureCallback([&](PressureLevel) {
    notifications.fetch_add(1);
    cache.Stats();
  });

  const int64_t num_threads = EnvInt("FKV_STRESS_THREADS", 4);
  const int64_t ops = EnvInt("FKV_STRESS_OPS", 600);
  const uint64_t seed = uint64_t(EnvInt("FKV_FUZZ_SEED", 1));
  std::mutex failure_mu;
  std::string failure;
  std::vector<FuzzCounts> counts(static_cast<size_t>(num_threads));
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t t = 0; t < num_threads; ++t) {
    threads.emplace_back([&, t] {
      try {
        CacheFuzzer fuzzer(&cache, SeqId(t) << 40, seed * 1000 + uint64_t(t),
                           CacheFuzzer::Options{false, false});
        for (int64_t i = 0; i < ops; ++i) fuzzer.Step();
        counts[size_t(t)] = fuzzer.counts();
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(failure_mu);
        if (failure.empty()) failure = e.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(failure, "");
  FuzzCounts total;
  for (const FuzzCounts& c : counts) total.Add(c);
  std::printf("concurrent (%s): %lld threads x %lld operations, seed %llu, %.1f s; %lld errors "
              "(%lld out of blocks), %lld prefix-hit tokens, %lld pressure notifications\n",
              EvictionPolicyName(GetParam()).c_str(), (long long)num_threads, (long long)ops,
              (unsigned long long)seed, seconds, (long long)total.errors,
              (long long)total.out_of_blocks, (long long)total.prefix_hit_tokens,
              (long long)notifications.load());
  EXPECT_EQ(total.steps, num_threads * ops);
  EXPECT_GT(total.prefix_hit_tokens, 0);
  EXPECT_NO_THROW(cache.CheckInvariants());
}

INSTANTIATE_TEST_SUITE_P(EveryPolicy, CacheConcurrentTest,
                         testing::Values(EvictionPolicyKind::kLru, EvictionPolicyKind::kFifo,
                                         EvictionPolicyKind::kPriorityLru,
                                         EvictionPolicyKind::kClock),
                         [](const testing::TestParamInfo<EvictionPolicyKind>& info) {
                           return EvictionPolicyName(info.param);
                         });

}  // namespace
}  // namespace ferrum_kv::fuzz
