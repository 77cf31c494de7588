#include "ferrum_kv/prefix_index.h"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <vector>

namespace ferrum_kv {
namespace {

BlockHash HashNumber(uint8_t n) {
  BlockHash hash{};
  hash[0] = n;
  hash[31] = uint8_t(n * 7);
  return hash;
}

PrefixKey KeyNumber(uint64_t n) { return PrefixKey{n * 0x9e3779b97f4a7c15ull, n}; }

TEST(PrefixIndexTest, InsertFindEraseClearAndTheirEvents) {
  PrefixIndex index(8, EvictionPolicyKind::kLru, /*log_events=*/true);
  EXPECT_EQ(index.Find(KeyNumber(1)), kNullBlock);
  const BlockHash h1 = HashNumber(1), h2 = HashNumber(2);
  EXPECT_TRUE(index.InsertIfAbsent(KeyNumber(1), 5, &h1));
  EXPECT_TRUE(index.InsertIfAbsent(KeyNumber(2), 3, &h2));
  EXPECT_FALSE(index.InsertIfAbsent(KeyNumber(2), 4, &h2));  // the content is cached already
  EXPECT_FALSE(index.IsCached(4));
  index.CheckInvariants();
  EXPECT_EQ(index.Find(KeyNumber(1)), 5);
  EXPECT_EQ(index.Find(KeyNumber(2)), 3);
  EXPECT_TRUE(index.IsCached(5) && index.IsCached(3) && !index.IsCached(0));
  EXPECT_EQ(index.KeyOf(3), KeyNumber(2));
  EXPECT_LT(index.PublishOrder(5), index.PublishOrder(3));
  EXPECT_EQ(index.size(), 2);

  index.evictable().Add(5, 0, index.PublishOrder(5));
  index.Erase(5);  // also leaves the eviction order
  index.CheckInvariants();
  EXPECT_FALSE(index.evictable().Contains(5));
  EXPECT_EQ(index.Find(KeyNumber(1)), kNullBlock);
  EXPECT_FALSE(index.IsCached(5));
  EXPECT_TRUE(index.InsertIfAbsent(KeyNumber(1), 6, &h1));  // the same content in another block
  EXPECT_EQ(index.Find(KeyNumber(1)), 6);
  EXPECT_EQ(index.CachedBlocks(), (std::vector<BlockId>{3, 6}));

  index.Clear();
  index.CheckInvariants();
  EXPECT_EQ(index.size(), 0);
  EXPECT_TRUE(index.CachedBlocks().empty());
  EXPECT_EQ(index.Find(KeyNumber(2)), kNullBlock);

  const std::vector<CacheEvent> events = index.DrainEvents();
  using Kind = CacheEvent::Kind;
  ASSERT_EQ(events.size(), 5u);
  const Kind kinds[] = {Kind::kBlockStored, Kind::kBlockStored, Kind::kBlockRemoved,
                        Kind::kBlockStored, Kind::kAllCleared};
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq_no, i + 1);
    EXPECT_EQ(events[i].kind, kinds[i]);
  }
  EXPECT_EQ(events[2].hash, h1);
  EXPECT_EQ(events[2].block, 5);
  EXPECT_TRUE(index.DrainEvents().empty());
  EXPECT_EQ(index.events_dropped(), 0);
}

TEST(PrefixIndexTest, WithoutEventsNothingIsLogged) {
  PrefixIndex index(4, EvictionPolicyKind::kLru, /*log_events=*/false);
  EXPECT_TRUE(index.InsertIfAbsent(KeyNumber(1), 2, nullptr));
  index.Erase(2);
  index.Clear();
  EXPECT_TRUE(index.DrainEvents().empty());
  index.CheckInvariants();
}

// InsertBatch is InsertIfAbsent in order, minus blocks already cached, across its chunks of 32.
TEST(PrefixIndexTest, InsertBatchSkipsCachedBlocksAndCachedContent) {
  constexpr int32_t kBlocks = 100;
  PrefixIndex index(kBlocks, EvictionPolicyKind::kLru, /*log_events=*/true);
  const BlockHash already = HashNumber(200);
  ASSERT_TRUE(index.InsertIfAbsent(KeyNumber(1000), 7, &already));  // block 7 is cached already
  std::vector<PrefixKey> keys;
  std::vector<BlockId> blocks;
  std::vector<BlockHash> hashes;
  for (int32_t i = 0; i < 80; ++i) {
    keys.push_back(KeyNumber(uint64_t(i)));
    blocks.push_back(i + 10);
    hashes.push_back(HashNumber(uint8_t(i)));
  }
  blocks[0] = 7;                 // cached under another key: skipped
  keys[50] = keys[40];           // block 50's content is block 40's (one chunk later): skipped
  blocks[79] = blocks[78];       // the same block twice: the second is cached by then: skipped
  std::vector<BlockId> inserted{-5};  // appended to
  index.InsertBatch(keys.data(), blocks.data(), hashes.data(), 80, &inserted);
  index.CheckInvariants();

  std::vector<BlockId> expected{-5};
  for (int32_t i = 1; i < 79; ++i) {
    if (i != 50) expected.push_back(i + 10);
  }
  EXPECT_EQ(inserted, expected);
  EXPECT_EQ(index.size(), 1 + 77);  // block 7 and the new ones
  EXPECT_EQ(index.Find(KeyNumber(1000)), 7);
  EXPECT_EQ(index.Find(KeyNumber(0)), kNullBlock);
  EXPECT_EQ(index.Find(keys[40]), 50);
  EXPECT_FALSE(index.IsCached(60));
  EXPECT_EQ(index.Find(keys[78]), 88);
  EXPECT_EQ(index.Find(keys[79]), kNullBlock);
  const std::vector<CacheEvent> events = index.DrainEvents();
  ASSERT_EQ(events.size(), 1u + 77u);
  EXPECT_EQ(events[1].hash, hashes[1]);
  EXPECT_EQ(events[1].block, 11);
}

// Keys that share their low word (one home slot) and keys whose probe runs wrap around the table:
// random inserts and erases against a std::map model, with the invariants after every step.
TEST(PrefixIndexTest, CollidingKeysAgainstAModel) {
  constexpr int32_t kBlocks = 16;  // 32 slots
  PrefixIndex index(kBlocks, EvictionPolicyKind::kLru, /*log_events=*/false);
  std::mt19937 rng(3);
  std::vector<PrefixKey> key_of(kBlocks);
  std::set<BlockId> cached;
  uint64_t next_hi = 1;
  for (int step = 0; step < 4000; ++step) {
    const BlockId block = BlockId(rng() % kBlocks);
    if (cached.count(block)) {
      index.Erase(block);
      cached.erase(block);
    } else {
      // Low words from a few values near the end of the table: long, wrapping probe runs.
      const uint64_t lo = 29 + rng() % 4 + (rng() % 2) * 32;
      key_of[block] = PrefixKey{lo, next_hi++};
      ASSERT_TRUE(index.InsertIfAbsent(key_of[block], block, nullptr));
      cached.insert(block);
    }
    index.CheckInvariants();
    ASSERT_EQ(index.size(), int64_t(cached.size()));
    for (BlockId b : cached) ASSERT_EQ(index.Find(key_of[b]), b);
    ASSERT_EQ(index.Find(PrefixKey{29, 0}), kNullBlock);  // same low word, unknown high word
  }
}

}  // namespace
}  // namespace ferrum_kv
