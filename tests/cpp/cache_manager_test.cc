#include "ferrum_kv/cache_manager.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "ferrum_kv/errors.h"

namespace ferrum_kv {
namespace {

CacheConfig Config(int32_t num_blocks, int32_t num_host_blocks) {
  CacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 2;
  c.head_dim = 3;
  c.block_size = 4;
  c.num_blocks = num_blocks;
  c.num_host_blocks = num_host_blocks;
  return c;
}

std::vector<int32_t> Range(int32_t n) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) tokens[i] = i;
  return tokens;
}

// Writes distinct values into every token of seq (all layers) so copies can be checked.
void FillSequence(PagedKvCache& cache, SeqId seq, float base) {
  const int64_t n = cache.NumTokens(seq);
  const std::vector<int32_t> slots = cache.SlotMapping(seq, 0, n);
  std::vector<float> k(size_t(n) * 6), v(size_t(n) * 6);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = base + float(i);
    v[i] = -base - float(i);
  }
  for (int32_t layer = 0; layer < 2; ++layer) {
    cache.WriteKv(layer, slots.data(), n, k.data(), v.data(), DType::kFloat32);
  }
}

std::vector<uint8_t> Gather(const PagedKvCache& cache, SeqId seq, int32_t layer) {
  std::vector<uint8_t> k, v;
  cache.GatherKv(seq, layer, &k, &v);
  k.insert(k.end(), v.begin(), v.end());
  return k;
}

TEST(PagedKvCacheTest, AddAppendFreeKeepTablesExact) {
  PagedKvCache cache(Config(8, 0));
  const std::vector<int32_t> tokens = Range(5);
  EXPECT_EQ(cache.AddSequence(1, tokens.data(), 5), 0);
  cache.CheckInvariants();
  EXPECT_EQ(cache.BlockTable(1), (std::vector<BlockId>{0, 1}));
  cache.AppendTokens(1, tokens.data(), 3);  // 8 tokens: exactly two blocks
  cache.CheckInvariants();
  EXPECT_EQ(cache.BlockTable(1).size(), 2u);
  const SeqId ids[] = {1};
  const int32_t next[] = {42};
  cache.AppendBatch(ids, next, 1);
  cache.CheckInvariants();
  EXPECT_EQ(cache.BlockTable(1).size(), 3u);
  EXPECT_EQ(cache.Tokens(1).back(), 42);
  cache.FreeSequence(1);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().free_blocks, 8);
  EXPECT_THROW(cache.FreeSequence(1), UnknownSequence);
}

TEST(PagedKvCacheTest, FailedCallsChangeNothing) {
  PagedKvCache cache(Config(4, 1));
  const std::vector<int32_t> tokens = Range(16);
  cache.AddSequence(1, tokens.data(), 9);  // 3 blocks
  const CacheStats before = cache.Stats();
  EXPECT_THROW(cache.AddSequence(2, tokens.data(), 5), OutOfBlocksError);
  cache.CheckInvariants();
  EXPECT_THROW(cache.AppendTokens(1, tokens.data(), 8), OutOfBlocksError);  // needs 2, 1 free
  cache.CheckInvariants();
  EXPECT_THROW(cache.SwapOut(1), OutOfBlocksError);  // 3 blocks, host tier holds 1
  cache.CheckInvariants();
  EXPECT_THROW(cache.AddSequence(1, tokens.data(), 1), InvalidArgument);
  const int32_t negative[] = {3, -1};
  EXPECT_THROW(cache.AppendTokens(1, negative, 2), InvalidArgument);
  const SeqId twice[] = {1, 1};
  EXPECT_THROW(cache.AppendBatch(twice, tokens.data(), 2), InvalidArgument);
  const CacheStats after = cache.Stats();
  EXPECT_EQ(after.free_blocks, before.free_blocks);
  EXPECT_EQ(after.free_host_blocks, before.free_host_blocks);
  EXPECT_EQ(after.allocation_failures, before.allocation_failures + 3);
  EXPECT_EQ(cache.NumTokens(1), 9);
  EXPECT_EQ(cache.BlockTable(1), (std::vector<BlockId>{0, 1, 2}));
  cache.CheckInvariants();
}

TEST(PagedKvCacheTest, CopyOnWriteCopiesTheSharedTailBlock) {
  PagedKvCache cache(Config(8, 0));
  const std::vector<int32_t> tokens = Range(6);
  cache.AddSequence(1, tokens.data(), 6);
  FillSequence(cache, 1, 1.0f);
  const std::vector<uint8_t> parent_before = Gather(cache, 1, 1);
  cache.Fork(1, 2);
  cache.CheckInvariants();
  cache.AppendTokens(2, tokens.data(), 1);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cow_copies, 1);
  EXPECT_EQ(cache.BlockTable(1)[0], cache.BlockTable(2)[0]);
  EXPECT_NE(cache.BlockTable(1)[1], cache.BlockTable(2)[1]);
  // The child's first 6 tokens are a real copy of the parent's data.
  std::vector<uint8_t> k1, v1, k2, v2;
  cache.GatherKv(1, 1, &k1, &v1);
  cache.GatherKv(2, 1, &k2, &v2);
  EXPECT_EQ(0, std::memcmp(k1.data(), k2.data(), k1.size()));
  EXPECT_EQ(0, std::memcmp(v1.data(), v2.data(), v1.size()));
  EXPECT_EQ(Gather(cache, 1, 1), parent_before);
}

TEST(PagedKvCacheTest, SwapRoundTripIsBitExact) {
  PagedKvCache cache(Config(6, 4));
  const std::vector<int32_t> tokens = Range(11);
  cache.AddSequence(1, tokens.data(), 11);
  FillSequence(cache, 1, 7.0f);
  const std::vector<uint8_t> layer0 = Gather(cache, 1, 0), layer1 = Gather(cache, 1, 1);
  cache.SwapOut(1);
  cache.CheckInvariants();
  EXPECT_TRUE(cache.IsSwapped(1));
  EXPECT_EQ(Gather(cache, 1, 0), layer0);
  cache.AddSequence(2, tokens.data(), 2);  // take block 0 so the ids change
  cache.SwapIn(1);
  cache.CheckInvariants();
  EXPECT_FALSE(cache.IsSwapped(1));
  EXPECT_EQ(Gather(cache, 1, 0), layer0);
  EXPECT_EQ(Gather(cache, 1, 1), layer1);
  EXPECT_THROW(cache.SwapIn(1), InvalidStateError);
}

TEST(PagedKvCacheTest, BatchMetadataDenseAndCsrAgree) {
  PagedKvCache cache(Config(16, 0));
  const std::vector<int32_t> tokens = Range(13);
  cache.AddSequence(10, tokens.data(), 13);
  cache.AddSequence(20, tokens.data(), 1);
  cache.AddSequence(30, tokens.data(), 8);
  const SeqId ids[] = {20, 10, 30};
  const BatchMetadata m = cache.BuildBatchMetadata(ids, 3);
  EXPECT_EQ(m.max_blocks, 4);
  EXPECT_EQ(m.context_lens, (std::vector<int32_t>{1, 13, 8}));
  EXPECT_EQ(m.indptr, (std::vector<int32_t>{0, 1, 5, 7}));
  EXPECT_EQ(m.last_block_len, (std::vector<int32_t>{1, 1, 4}));
  for (int i = 0; i < 3; ++i) {
    const std::vector<BlockId> table = cache.BlockTable(ids[i]);
    for (int64_t j = 0; j < m.max_blocks; ++j) {
      const int32_t expected = j < int64_t(table.size()) ? table[j] : kNullBlock;
      EXPECT_EQ(m.block_tables[i * m.max_blocks + j], expected);
    }
    for (int32_t j = m.indptr[i]; j < m.indptr[i + 1]; ++j) {
      EXPECT_EQ(m.indices[j], table[j - m.indptr[i]]);
    }
    const int64_t n = cache.NumTokens(ids[i]);
    EXPECT_EQ(m.slot_mapping[i], cache.SlotMapping(ids[i], n - 1, n)[0]);
  }
}

TEST(PagedKvCacheTest, PressureCallbackSeesEveryChange) {
  CacheConfig config = Config(10, 0);
  config.high_watermark = 0.5;
  config.critical_watermark = 0.2;
  PagedKvCache cache(config);
  std::vector<PressureLevel> seen;
  cache.SetPressureCallback([&seen](PressureLevel level) { seen.push_back(level); });
  const std::vector<int32_t> tokens = Range(40);
  cache.AddSequence(1, tokens.data(), 24);  // 6 of 10 used
  cache.AddSequence(2, tokens.data(), 12);  // 9 of 10 used
  cache.FreeSequence(1);
  EXPECT_EQ(seen, (std::vector<PressureLevel>{PressureLevel::kHigh, PressureLevel::kCritical,
                                              PressureLevel::kLow}));
}

TEST(PagedKvCacheConcurrentTest, ThreadsOnDisjointSequences) {
  PagedKvCache cache(Config(256, 64));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      const std::vector<int32_t> tokens = Range(9);
      for (int i = 0; i < 300; ++i) {
        const SeqId seq = t * 100000 + i;
        try {
          cache.AddSequence(seq, tokens.data(), 1 + i % 9);
          cache.Fork(seq, seq + 50000);
          const SeqId batch[] = {seq, seq + 50000};
          cache.AppendBatch(batch, tokens.data(), 2);
          FillSequence(cache, seq, float(t));
          if (i % 4 == 0) {
            cache.SwapOut(seq);
            cache.SwapIn(seq);
          }
          cache.BuildBatchMetadata(batch, 2);
        } catch (const OutOfBlocksError&) {
        }
        if (cache.Contains(seq)) cache.FreeSequence(seq);
        if (cache.Contains(seq + 50000)) cache.FreeSequence(seq + 50000);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  cache.CheckInvariants();
  EXPECT_EQ(cache.NumSequences(), 0);
  EXPECT_EQ(cache.Stats().free_blocks, 256);
}

}  // namespace
}  // namespace ferrum_kv

namespace ferrum_kv {
namespace {

TEST(PagedKvCachePrefixTest, ReuseEvictionAndInvariants) {
  CacheConfig config = Config(6, 0);
  config.enable_prefix_caching = true;
  config.enable_kv_events = true;
  PagedKvCache cache(config);
  const std::vector<int32_t> prompt = Range(16);  // 4 blocks
  EXPECT_EQ(cache.AddSequence(1, prompt.data(), 16), 0);
  cache.MarkComputed(1, 16);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cached_blocks, 4);
  EXPECT_EQ(cache.AddSequence(2, prompt.data(), 16, "", 0), 12);  // all but the last block
  cache.CheckInvariants();
  EXPECT_THROW(cache.AddSequence(3, prompt.data(), 16, "other tenant", 0),  // no hit: 4 blocks
               OutOfBlocksError);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().allocation_failures, 1);
  cache.FreeSequence(1);
  cache.FreeSequence(2);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().evictable_blocks, 4);
  EXPECT_EQ(cache.Stats().free_blocks, 2);  // sequence 2's own last block was never published
  const std::vector<int32_t> other = Range(20);
  const std::vector<int32_t> fresh(other.begin() + 4, other.end());
  cache.AddSequence(4, fresh.data(), 12);  // 3 blocks: 2 free + the prompt's last block evicted
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().evictions, 1);
  const SeqId seq_five = 5;
  EXPECT_THROW(cache.AddSequence(seq_five, prompt.data(), 16), OutOfBlocksError);  // hits pinned
  cache.FreeSequence(4);
  EXPECT_EQ(cache.AddSequence(seq_five, prompt.data(), 16), 12);
  cache.CheckInvariants();
  const std::vector<CacheEvent> events = cache.DrainEvents();
  ASSERT_EQ(events.size(), 5u);  // 4 stored, 1 removed
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq_no, i + 1);
  EXPECT_EQ(events[4].kind, CacheEvent::Kind::kBlockRemoved);
  cache.ResetPrefixCache();
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cached_blocks, 0);
}

// Whole-prompt hits: the stored copy of the partly filled last block is shared copy-on-write,
// the logits come back, the copy's reference is counted, and it is reclaimed when needed.
TEST(PagedKvCachePrefixTest, WholePromptHitsShareTheStoredCopy) {
  CacheConfig config = Config(6, 0);
  config.enable_prefix_caching = true;
  config.max_prompt_logits = 2;
  PagedKvCache cache(config);
  const std::vector<int32_t> prompt = Range(6);  // a full block and 2 tokens
  cache.AddSequence(1, prompt.data(), 6);
  FillSequence(cache, 1, 10.0f);
  const std::vector<float> logits = {0.25f, -1.5f, 3.0f};
  EXPECT_THROW(cache.StoreLogits(1, logits.data(), 3), InvalidStateError);  // not computed
  cache.MarkComputed(1, 6);
  cache.StoreLogits(1, logits.data(), 3);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().used_blocks, 3);  // the sequence's 2 blocks and the copy
  std::vector<float> got = {9.0f};
  EXPECT_EQ(cache.AddSequenceWithLogits(2, prompt.data(), 6, "", 0, &got), 6);
  EXPECT_EQ(got, logits);
  EXPECT_EQ(cache.Stats().used_blocks, 3);
  EXPECT_EQ(Gather(cache, 2, 0), Gather(cache, 1, 0));
  EXPECT_EQ(Gather(cache, 2, 1), Gather(cache, 1, 1));
  EXPECT_NE(cache.BlockTable(2).back(), cache.BlockTable(1).back());
  cache.CheckInvariants();
  const SeqId two = 2;
  const int32_t token = 99;
  cache.AppendBatch(&two, &token, 1);  // copies the stored block first
  EXPECT_EQ(cache.Stats().cow_copies, 1);
  cache.CheckInvariants();
  EXPECT_EQ(cache.AddSequenceWithLogits(3, prompt.data(), 5, "", 0, &got), 4);  // a prefix
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(cache.AddSequence(4, prompt.data(), 6), 4);  // plain: never the whole prompt
  cache.CheckInvariants();
  for (SeqId seq : {1, 2, 3, 4}) cache.FreeSequence(seq);
  cache.CheckInvariants();
  // 4 free, 1 evictable (the full block), the copy reclaimable: 6 blocks available.
  EXPECT_TRUE(cache.CanAllocate(6 * 4));
  const std::vector<int32_t> other = Range(30);
  cache.AddSequence(5, other.data() + 6, 24);  // 6 blocks: evicts the full block, drops the copy
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().prompt_logits, 0);
  EXPECT_EQ(cache.Stats().prompt_logits_hits, 1);
}

}  // namespace
}  // namespace ferrum_kv
