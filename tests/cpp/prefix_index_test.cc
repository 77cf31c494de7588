#include "ferrum_kv/prefix_index.h"

#include <gtest/gtest.h>

#include <vector>

namespace ferrum_kv {
namespace {

BlockHash HashNumber(uint8_t n) {
  BlockHash hash{};
  hash[0] = n;
  hash[31] = uint8_t(n * 7);
  return hash;
}

TEST(PrefixIndexTest, InsertFindEraseClearAndTheirEvents) {
  PrefixIndex index(8, EvictionPolicyKind::kLru);
  EXPECT_EQ(index.Find(HashNumber(1)), kNullBlock);
  index.Insert(HashNumber(1), 5);
  index.Insert(HashNumber(2), 3);
  EXPECT_EQ(index.Find(HashNumber(1)), 5);
  EXPECT_EQ(index.Find(HashNumber(2)), 3);
  EXPECT_TRUE(index.IsCached(5) && index.IsCached(3) && !index.IsCached(0));
  EXPECT_EQ(index.HashOf(3), HashNumber(2));
  EXPECT_LT(index.PublishOrder(5), index.PublishOrder(3));
  EXPECT_EQ(index.size(), 2);

  index.evictable().Add(5, 0, index.PublishOrder(5));
  index.Erase(5);  // also leaves the eviction order
  EXPECT_FALSE(index.evictable().Contains(5));
  EXPECT_EQ(index.Find(HashNumber(1)), kNullBlock);
  EXPECT_FALSE(index.IsCached(5));
  index.Insert(HashNumber(1), 6);  // the same content in another block
  EXPECT_EQ(index.Find(HashNumber(1)), 6);
  EXPECT_EQ(index.CachedBlocks(), (std::vector<BlockId>{3, 6}));

  index.Clear();
  EXPECT_EQ(index.size(), 0);
  EXPECT_TRUE(index.CachedBlocks().empty());
  EXPECT_EQ(index.Find(HashNumber(2)), kNullBlock);

  const std::vector<CacheEvent> events = index.DrainEvents();
  using Kind = CacheEvent::Kind;
  ASSERT_EQ(events.size(), 5u);
  const Kind kinds[] = {Kind::kBlockStored, Kind::kBlockStored, Kind::kBlockRemoved,
                        Kind::kBlockStored, Kind::kAllCleared};
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq_no, i + 1);
    EXPECT_EQ(events[i].kind, kinds[i]);
  }
  EXPECT_EQ(events[2].hash, HashNumber(1));
  EXPECT_EQ(events[2].block, 5);
  EXPECT_TRUE(index.DrainEvents().empty());
  EXPECT_EQ(index.events_dropped(), 0);
}

}  // namespace
}  // namespace ferrum_kv
