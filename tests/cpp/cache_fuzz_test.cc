// The random operation driver (fuzz/cache_fuzzer.h) against its model, over many random
// configurations (every dtype, eviction policy, with and without prefix caching, events, stored
// prompts, host tier). CI runs a short budget; FKV_FUZZ_OPS / FKV_FUZZ_SEED run more
// (tests/fuzz_long.sh).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "fuzz/cache_fuzzer.h"
#include "fuzz/cache_model.h"
#include "fuzz/env.h"
#include "fuzz/state_digest.h"

namespace ferrum_kv::fuzz {
namespace {

TEST(CacheFuzzTest, RandomOperationsMatchTheModel) {
  FuzzRunOptions options;
  options.seed = uint64_t(EnvInt("FKV_FUZZ_SEED", 1));
  options.ops = EnvInt("FKV_FUZZ_OPS", 200000);
  const auto start = std::chrono::steady_clock::now();
  const FuzzCounts counts = RunFuzz(options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fuzz: %lld operations, seed %llu, %.1f s; %lld errors (%lld out of blocks), "
              "%lld prefix-hit tokens, %lld whole-prompt hits, %lld evictions, %lld "
              "copy-on-write copies, %lld swap-ins\n",
              (long long)counts.steps, (unsigned long long)options.seed, seconds,
              (long long)counts.errors, (long long)counts.out_of_blocks,
              (long long)counts.prefix_hit_tokens, (long long)counts.whole_prompt_hits,
              (long long)counts.evictions, (long long)counts.cow_copies,
              (long long)counts.swap_ins);
  EXPECT_EQ(counts.steps, options.ops);
  // The budget reaches the paths that matter (else the run proves little).
  EXPECT_GT(counts.out_of_blocks, 0);
  EXPECT_GT(counts.prefix_hit_tokens, 0);
  EXPECT_GT(counts.whole_prompt_hits, 0);
  EXPECT_GT(counts.evictions, 0);
  EXPECT_GT(counts.cow_copies, 0);
  EXPECT_GT(counts.swap_ins, 0);
}

CacheConfig SmallConfig() {
  CacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 1;
  c.head_dim = 2;
  c.block_size = 2;
  c.num_blocks = 8;
  c.dtype = DType::kFloat16;
  return c;
}

// The model's check fails when the cache's K/V differs from what was written.
TEST(CacheFuzzTest, ModelCheckCatchesCorruptKv) {
  PagedKvCache cache(SmallConfig());
  const std::vector<int32_t> tokens = {3, 1, 2};
  cache.AddSequence(7, tokens.data(), 3);
  ModelSequence seq{tokens, "", false, 0, 3};
  const std::vector<int32_t> slots = cache.SlotMapping(7, 0, 3);
  for (int32_t layer = 0; layer < 2; ++layer) {
    std::vector<float> k, v;
    ExpectedKv(cache.config(), tokens, 0, 3, layer, &k, &v);
    cache.WriteKv(layer, slots.data(), 3, k.data(), v.data(), DType::kFloat32);
  }
  EXPECT_NO_THROW(CheckSequence(cache, 7, seq));
  // One byte of layer 1's V of the last token, behind the cache's back.
  const int64_t block = cache.BlockTable(7)[1];
  uint8_t* data = cache.storage()->BlockData(BlockId(block));
  const int64_t v_offset = (1 * cache.storage()->LayerStride() + cache.storage()->KvStride()) * 2;
  data[v_offset] ^= 1;
  EXPECT_THROW(CheckSequence(cache, 7, seq), std::logic_error);
  data[v_offset] ^= 1;
  seq.tokens.push_back(0);
  EXPECT_THROW(CheckSequence(cache, 7, seq), std::logic_error);
}

// The digest sees a sequence's tokens and K/V change, and nothing else.
TEST(CacheFuzzTest, DigestSeesObservableChanges) {
  PagedKvCache cache(SmallConfig());
  const std::vector<int32_t> tokens = {3, 1, 2};
  cache.AddSequence(7, tokens.data(), 3);
  const uint64_t before = StateDigest(cache, {7});
  EXPECT_EQ(StateDigest(cache, {7}), before);
  const std::vector<int32_t> slot = cache.SlotMapping(7, 2, 3);
  const std::vector<float> k = {1, 2}, v = {3, 4};
  cache.WriteKv(1, slot.data(), 1, k.data(), v.data(), DType::kFloat32);
  const uint64_t written = StateDigest(cache, {7});
  EXPECT_NE(written, before);
  cache.AppendTokens(7, tokens.data(), 1);
  EXPECT_NE(StateDigest(cache, {7}), written);
}

}  // namespace
}  // namespace ferrum_kv::fuzz
