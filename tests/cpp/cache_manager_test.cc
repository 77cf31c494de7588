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

TEST(PagedKvCacheTest, ForkOfAPrefixSharesOnlyItsBlocks) {
  CacheConfig config = Config(10, 0);
  config.enable_prefix_caching = true;
  PagedKvCache cache(config);
  const std::vector<int32_t> tokens = Range(11);  // 3 blocks of 4
  cache.AddSequence(1, tokens.data(), 11);
  FillSequence(cache, 1, 1.0f);
  cache.MarkComputed(1, 6);
  const std::vector<BlockId> parent = cache.BlockTable(1);
  // Errors first: nothing changes.
  EXPECT_THROW(cache.Fork(1, 2, 0), InvalidArgument);
  EXPECT_THROW(cache.Fork(1, 2, 12), InvalidArgument);
  EXPECT_THROW(cache.Fork(1, 1, 4), InvalidArgument);
  EXPECT_THROW(cache.Fork(7, 2, 4), UnknownSequence);
  EXPECT_FALSE(cache.Contains(2));
  cache.CheckInvariants();

  cache.Fork(1, 2, 8);  // two full blocks, one of them computed and published
  cache.CheckInvariants();
  EXPECT_EQ(cache.BlockTable(2), (std::vector<BlockId>{parent[0], parent[1]}));
  EXPECT_EQ(cache.Tokens(2), (std::vector<int32_t>(tokens.begin(), tokens.begin() + 8)));
  EXPECT_EQ(cache.NumComputed(2), 6);
  const std::vector<int32_t> own = {50, 51, 52, 53};
  cache.AppendTokens(2, own.data(), 4);  // a fresh block after the shared ones, no copy
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cow_copies, 0);
  EXPECT_EQ(cache.BlockTable(2).size(), 3u);
  EXPECT_NE(cache.BlockTable(2)[2], parent[2]);

  cache.Fork(1, 3, 6);  // ends inside block 1, which the parent holds full: copied on append
  EXPECT_EQ(cache.NumComputed(3), 6);
  cache.AppendTokens(3, own.data(), 1);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cow_copies, 1);
  EXPECT_EQ(cache.BlockTable(3)[0], parent[0]);
  EXPECT_NE(cache.BlockTable(3)[1], parent[1]);
  std::vector<uint8_t> k1, v1, k3, v3;
  cache.GatherKv(1, 0, &k1, &v1);
  cache.GatherKv(3, 0, &k3, &v3);
  ASSERT_EQ(k3.size() % 7, 0u);
  EXPECT_EQ(0, std::memcmp(k1.data(), k3.data(), k3.size() / 7 * 6));  // the 6 shared tokens
  EXPECT_EQ(0, std::memcmp(v1.data(), v3.data(), v3.size() / 7 * 6));

  // A fork shorter than what the parent published republishes from the root: the child's
  // marks find the parent's blocks cached and skip them.
  cache.MarkComputed(1, 11);
  const int64_t cached = cache.Stats().cached_blocks;
  cache.Fork(1, 4, 5);
  cache.MarkComputed(4, 5);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cached_blocks, cached);
  // A prefix ending inside a block the parent published full: once the parent is gone, the
  // child's copy-on-write leaves that block to the index alone, evictable.
  cache.Fork(1, 5, 6);
  cache.FreeSequence(1);
  cache.FreeSequence(4);
  cache.FreeSequence(2, 12);  // its own third block is published too
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cached_blocks, cached + 1);
  const int64_t evictable = cache.Stats().evictable_blocks;
  cache.AppendTokens(5, own.data(), 1);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().evictable_blocks, evictable + 1);
  cache.FreeSequence(3);
  cache.FreeSequence(5);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().used_blocks, cache.Stats().evictable_blocks);
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

namespace ferrum_kv {
namespace {

CacheConfig CachingConfig(int32_t num_blocks, int32_t num_host_blocks) {
  CacheConfig config = Config(num_blocks, num_host_blocks);
  config.enable_prefix_caching = true;
  return config;
}

// The admission case prefix caching exists for: 4 blocks, 3 held by a running, computed
// 12-token prompt; the same prompt plus one token needs only one fresh block.
TEST(PagedKvCacheAdmissionTest, CanAllocateTokensDiscountsPrefixHits) {
  PagedKvCache cache(CachingConfig(4, 0));
  const std::vector<int32_t> prompt = Range(12);
  cache.AddSequence(1, prompt.data(), 12);
  cache.MarkComputed(1, 12);
  cache.CheckInvariants();
  const std::vector<int32_t> longer = Range(13);
  const CacheStats before = cache.Stats();
  EXPECT_FALSE(cache.CanAllocate(13));  // counts every block
  EXPECT_EQ(cache.CachedPrefixLen(longer.data(), 13), 12);
  EXPECT_TRUE(cache.CanAllocate(longer.data(), 13));
  EXPECT_FALSE(cache.CanAllocate(longer.data(), 13, "other tenant"));  // no hit there
  EXPECT_EQ(cache.CachedPrefixLen(longer.data(), 13, "other tenant"), 0);
  EXPECT_EQ(cache.Stats().prefix_query_tokens, before.prefix_query_tokens);  // changed nothing
  EXPECT_EQ(cache.Stats().prefix_hit_tokens, before.prefix_hit_tokens);
  cache.CheckInvariants();
  EXPECT_EQ(cache.AddSequence(2, longer.data(), 13), 12);
  cache.CheckInvariants();
  EXPECT_EQ(cache.NumComputed(2), 12);
  EXPECT_THROW(cache.CanAllocate(longer.data(), 0), InvalidArgument);
  EXPECT_THROW(cache.CachedPrefixLen(longer.data(), 0), InvalidArgument);
}

// Random prompts over a small vocabulary against a small cache: CachedPrefixLen predicts what
// AddSequence returns and CanAllocate(tokens) whether it succeeds, with evictable hits (which
// stop counting as available once taken) and evictions in play.
TEST(PagedKvCacheAdmissionTest, ProbesPredictAddSequence) {
  PagedKvCache cache(CachingConfig(12, 0));
  std::mt19937 rng(7);
  std::vector<SeqId> live;
  int64_t successes = 0, refusals = 0, hits = 0;
  for (SeqId id = 0; id < 400; ++id) {
    std::vector<int32_t> tokens(size_t(1 + rng() % 20));
    const int32_t family = int32_t(rng() % 3);  // shared prefixes: few distinct leading blocks
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = i < 8 ? family * 10 + int32_t(i % 2) : int32_t(rng() % 3);
    }
    const int64_t n = int64_t(tokens.size());
    const int64_t predicted_hit = cache.CachedPrefixLen(tokens.data(), n);
    const bool fits = cache.CanAllocate(tokens.data(), n);
    bool added = true;
    try {
      EXPECT_EQ(cache.AddSequence(id, tokens.data(), n), predicted_hit);
    } catch (const OutOfBlocksError&) {
      added = false;
    }
    cache.CheckInvariants();
    ASSERT_EQ(added, fits) << "sequence " << id;
    successes += added;
    refusals += !added;
    hits += predicted_hit > 0;
    if (added) {
      cache.MarkComputed(id, int64_t(rng() % (n + 1)));
      live.push_back(id);
      cache.CheckInvariants();
    }
    while (!live.empty() && (rng() % 3 == 0 || !added)) {
      const size_t victim = rng() % live.size();
      cache.FreeSequence(live[victim]);
      live.erase(live.begin() + victim);
      cache.CheckInvariants();
      added = true;
    }
  }
  EXPECT_GT(successes, 50);  // every outcome occurred
  EXPECT_GT(refusals, 10);
  EXPECT_GT(hits, 50);
}

TEST(PagedKvCacheAdmissionTest, ProbesWithoutPrefixCaching) {
  PagedKvCache cache(Config(2, 0));
  const std::vector<int32_t> tokens = Range(9);
  EXPECT_EQ(cache.CachedPrefixLen(tokens.data(), 9), 0);
  EXPECT_FALSE(cache.CanAllocate(tokens.data(), 9));  // 3 blocks
  EXPECT_TRUE(cache.CanAllocate(tokens.data(), 8));
  cache.CheckInvariants();
}

TEST(PagedKvCacheComputedTest, NumComputedFollowsMarksHitsAndDecodeSteps) {
  PagedKvCache cache(CachingConfig(8, 0));
  const std::vector<int32_t> tokens = Range(10);
  cache.AddSequence(1, tokens.data(), 10);
  EXPECT_EQ(cache.NumComputed(1), 0);
  cache.MarkComputed(1, 4);
  cache.CheckInvariants();
  EXPECT_EQ(cache.NumComputed(1), 4);
  const SeqId one = 1;
  const int32_t token = 3;
  cache.AppendBatch(&one, &token, 1);  // the 10 tokens before the new one count as computed
  cache.CheckInvariants();
  EXPECT_EQ(cache.NumComputed(1), 10);
  const std::vector<SeqId> ids = {1};
  const BatchMetadata m = cache.BuildBatchMetadata(ids.data(), 1);
  EXPECT_EQ(m.num_computed, (std::vector<int32_t>{10}));
  EXPECT_EQ(m.context_lens, (std::vector<int32_t>{11}));
  EXPECT_EQ(cache.AddSequence(2, tokens.data(), 10), 8);
  cache.CheckInvariants();
  EXPECT_EQ(cache.NumComputed(2), 8);
  EXPECT_THROW(cache.NumComputed(3), UnknownSequence);
}

// A finished chat turn: decode steps computed all but the last token; the engine wrote that one's
// K/V too. FreeSequence(seq, n) publishes the block it completes, so the next turn hits it.
TEST(PagedKvCacheComputedTest, FreeSequenceWithComputedCountKeepsTheLastBlock) {
  for (const bool mark_last : {false, true}) {
    PagedKvCache cache(CachingConfig(8, 0));
    const std::vector<int32_t> turn = Range(6);
    cache.AddSequence(1, turn.data(), 6);
    cache.MarkComputed(1, 6);
    const SeqId one = 1;
    for (const int32_t token : {6, 7}) cache.AppendBatch(&one, &token, 1);  // 8 tokens
    EXPECT_EQ(cache.NumComputed(1), 7);
    if (mark_last) {
      cache.FreeSequence(1, 8);
    } else {
      cache.FreeSequence(1);
    }
    cache.CheckInvariants();
    const std::vector<int32_t> next_turn = Range(11);
    EXPECT_EQ(cache.AddSequence(2, next_turn.data(), 11), mark_last ? 8 : 4);
    cache.CheckInvariants();
  }
}

TEST(PagedKvCacheComputedTest, FreeSequenceWithComputedCountValidatesFirst) {
  PagedKvCache cache(CachingConfig(8, 4));
  const std::vector<int32_t> tokens = Range(8);
  cache.AddSequence(1, tokens.data(), 8);
  EXPECT_THROW(cache.FreeSequence(1, 9), InvalidArgument);
  EXPECT_THROW(cache.FreeSequence(1, -1), InvalidArgument);
  EXPECT_THROW(cache.FreeSequence(2, 1), UnknownSequence);
  cache.CheckInvariants();
  EXPECT_TRUE(cache.Contains(1));
  cache.SwapOut(1);
  cache.FreeSequence(1, 8);  // swapped out: nothing to publish, host blocks freed
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().cached_blocks, 0);
  EXPECT_EQ(cache.Stats().free_host_blocks, 4);
}

// Slots taken before FreeSequence or SwapOut point into blocks nobody holds: WriteKv refuses
// them before writing anything, while slots of held blocks (and -1) still work.
TEST(PagedKvCacheWriteTest, WriteKvRejectsSlotsOfFreeBlocks) {
  PagedKvCache cache(Config(8, 4));
  const std::vector<int32_t> tokens = Range(6);
  cache.AddSequence(1, tokens.data(), 6);
  cache.AddSequence(2, tokens.data(), 6);
  const std::vector<int32_t> stale_free = cache.SlotMapping(1, 0, 6);
  const std::vector<int32_t> stale_swapped = cache.SlotMapping(2, 0, 6);
  FillSequence(cache, 1, 1.0f);
  FillSequence(cache, 2, 2.0f);
  cache.FreeSequence(1);
  cache.SwapOut(2);
  cache.CheckInvariants();
  const std::vector<float> k(6 * 6, 9.0f);
  for (const std::vector<int32_t>* stale : {&stale_free, &stale_swapped}) {
    EXPECT_THROW(cache.WriteKv(0, stale->data(), 6, k.data(), k.data(), DType::kFloat32),
                 InvalidStateError);
  }
  cache.AddSequence(3, tokens.data(), 2);
  const std::vector<int32_t> live = cache.SlotMapping(3, 0, 2);
  // One stale slot among live ones and a skipped one: nothing is written.
  const std::vector<int32_t> mixed = {live[0], -1, stale_free[5], live[1]};
  const std::vector<uint8_t> before = Gather(cache, 3, 0);
  EXPECT_THROW(cache.WriteKv(0, mixed.data(), 4, k.data(), k.data(), DType::kFloat32),
               InvalidStateError);
  EXPECT_EQ(Gather(cache, 3, 0), before);
  const std::vector<int32_t> ok = {live[0], -1, live[1]};
  cache.WriteKv(0, ok.data(), 3, k.data(), k.data(), DType::kFloat32);
  EXPECT_NE(Gather(cache, 3, 0), before);
  const std::vector<int32_t> out_of_range = {8 * 4};
  EXPECT_THROW(cache.WriteKv(0, out_of_range.data(), 1, k.data(), k.data(), DType::kFloat32),
               IndexOutOfRange);
  cache.CheckInvariants();
}

// A block held only by the prefix index (published, then freed by its sequence) is still held:
// writes into it are not refused (documented limit of the check).
TEST(PagedKvCacheWriteTest, WriteKvAcceptsBlocksTheIndexHolds) {
  PagedKvCache cache(CachingConfig(8, 0));
  const std::vector<int32_t> tokens = Range(8);
  cache.AddSequence(1, tokens.data(), 8);
  const std::vector<int32_t> slots = cache.SlotMapping(1, 0, 8);
  cache.MarkComputed(1, 8);
  cache.FreeSequence(1);
  cache.CheckInvariants();
  const std::vector<float> k(8 * 6, 1.0f);
  cache.WriteKv(0, slots.data(), 8, k.data(), k.data(), DType::kFloat32);
  cache.CheckInvariants();
}

}  // namespace
}  // namespace ferrum_kv
