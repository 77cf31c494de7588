// Fault injection (fuzz/fault_injection.h, failing_allocator.cc): the random operation driver
// (fuzz/cache_fuzzer.h) runs every PagedKvCache call with the n-th fault point failing, for
// n = 1, 2, ... until the call passes all of them: every heap allocation, every new block
// allocation and every block copy the call makes. Each failure must leave the cache exactly as it
// was (strong guarantee: CheckInvariants and StateDigest). FKV_FAULT_OPS / FKV_FUZZ_SEED sweep
// more (tests/fuzz_long.sh).
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <new>

#include "fuzz/fault_injection.h"
#include "fuzz/cache_fuzzer.h"
#include "fuzz/env.h"

namespace ferrum_kv::fuzz {
namespace {

TEST(FaultInjectionTest, ArmedThreadFailsItsNthAllocationOnce) {
  // Nothing but the three allocations runs while armed (gtest's macros allocate).
  std::unique_ptr<int> first, second, third;
  bool threw = false;
  fault_injection::Arm(2);
  first = std::make_unique<int>(1);
  try {
    second = std::make_unique<int>(2);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  third = std::make_unique<int>(3);  // once only
  const int64_t hits = fault_injection::Hits();
  const bool armed = fault_injection::Armed();
  EXPECT_TRUE(threw);
  EXPECT_EQ(second, nullptr);
  EXPECT_EQ(hits, 2);
  EXPECT_FALSE(armed);
  EXPECT_EQ(*first + *third, 4);
}

TEST(FaultInjectionTest, EveryFaultPointOfEveryCallKeepsTheCacheAsItWas) {
  FuzzRunOptions options;
  options.seed = uint64_t(EnvInt("FKV_FUZZ_SEED", 1));
  options.ops = EnvInt("FKV_FAULT_OPS", 20000);
  options.ops_per_config = 250;
  options.sweep_faults = true;
  const FuzzCounts counts = RunFuzz(options);
  int64_t calls = 0;
  for (const auto& [operation, sites] : counts.fault_sites) {
    std::printf("  %-26s %7lld calls swept, %8lld fault points\n", operation.c_str(),
                (long long)sites.first, (long long)sites.second);
    calls += sites.first;
  }
  std::printf("fault sweep: %lld operations (seed %llu), %lld calls, %lld injected failures\n",
              (long long)counts.steps, (unsigned long long)options.seed, (long long)calls,
              (long long)counts.faults_injected);
  for (const auto& [operation, violation] : counts.violations) {
    std::printf("  NO STRONG GUARANTEE: %s, %lld times; first: %s\n", operation.c_str(),
                (long long)violation.first, violation.second.c_str());
  }
  EXPECT_TRUE(counts.violations.empty());
  EXPECT_EQ(counts.steps, options.ops);
  // Every mutating operation was swept (a call whose scratch is already large enough may pass
  // no fault point at all: swap_in often does).
  EXPECT_GT(counts.faults_injected, 0);
  for (const char* operation :
       {"add_sequence", "add_sequence_with_logits", "append_tokens", "append_batch", "fork",
        "free_sequence", "swap_out", "swap_in", "mark_computed", "mark_computed_batch",
        "store_logits", "reset_prefix_cache"}) {
    EXPECT_GT(counts.fault_sites.count(operation) ? counts.fault_sites.at(operation).first : 0, 0)
        << operation;
  }
}

}  // namespace
}  // namespace ferrum_kv::fuzz
