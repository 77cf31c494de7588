#include "ferrum_kv/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "ferrum_kv/errors.h"

namespace ferrum_kv {
namespace {

struct PoolSnapshot {
  int64_t num_free;
  std::vector<int32_t> ref_counts;
  bool operator==(const PoolSnapshot& o) const {
    return num_free == o.num_free && ref_counts == o.ref_counts;
  }
};

PoolSnapshot Snapshot(const BlockPool& pool) {
  PoolSnapshot s{pool.num_free_blocks(), {}};
  for (int32_t id = 0; id < pool.num_blocks(); ++id) s.ref_counts.push_back(pool.RefCount(id));
  return s;
}

TEST(BlockPoolTest, ConstructorRejectsBadSizes) {
  EXPECT_THROW(BlockPool(0), InvalidArgument);
  EXPECT_THROW(BlockPool(-5), InvalidArgument);
  EXPECT_THROW(BlockPool(kMaxBlocks + 1), InvalidArgument);
}

TEST(BlockPoolTest, FreshPoolHandsOutIdsInOrder) {
  BlockPool pool(8);
  pool.CheckInvariants();
  EXPECT_EQ(pool.num_free_blocks(), 8);
  EXPECT_EQ(pool.Allocate(3), (std::vector<BlockId>{0, 1, 2}));
  pool.CheckInvariants();
  EXPECT_EQ(pool.num_used_blocks(), 3);
  for (BlockId id : {0, 1, 2}) EXPECT_EQ(pool.RefCount(id), 1);
  EXPECT_EQ(pool.RefCount(3), 0);
}

TEST(BlockPoolTest, LeastRecentlyFreedIsReusedFirst) {
  BlockPool pool(4);
  std::vector<BlockId> all = pool.Allocate(4);
  const BlockId order[] = {2, 0, 3};
  pool.Free(order, 3);
  pool.CheckInvariants();
  EXPECT_EQ(pool.Allocate(3), (std::vector<BlockId>{2, 0, 3}));
  pool.CheckInvariants();
}

TEST(BlockPoolTest, SharedBlockReturnsOnlyAtZero) {
  BlockPool pool(2);
  const std::vector<BlockId> ids = pool.Allocate(1);
  pool.IncRef(ids.data(), 1);
  pool.CheckInvariants();
  EXPECT_EQ(pool.RefCount(ids[0]), 2);
  pool.Free(ids.data(), 1);
  pool.CheckInvariants();
  EXPECT_EQ(pool.num_free_blocks(), 1);
  pool.Free(ids.data(), 1);
  pool.CheckInvariants();
  EXPECT_EQ(pool.num_free_blocks(), 2);
  EXPECT_EQ(pool.stats().blocks_freed, 1);
}

TEST(BlockPoolTest, FailedAllocationChangesNothing) {
  BlockPool pool(5);
  std::vector<BlockId> held = pool.Allocate(3);
  pool.IncRef(held.data(), 1);
  const PoolSnapshot before = Snapshot(pool);
  EXPECT_THROW(pool.Allocate(3), OutOfBlocksError);
  pool.CheckInvariants();
  EXPECT_TRUE(Snapshot(pool) == before);
  EXPECT_EQ(pool.stats().allocation_failures, 1);
  EXPECT_EQ(pool.Allocate(2).size(), 2u);  // the two free blocks are still there
}

TEST(BlockPoolTest, BadFreeBatchChangesNothing) {
  BlockPool pool(6);
  std::vector<BlockId> held = pool.Allocate(4);
  const PoolSnapshot before = Snapshot(pool);
  const BlockId out_of_range[] = {0, 1, 6};
  EXPECT_THROW(pool.Free(out_of_range, 3), IndexOutOfRange);
  EXPECT_TRUE(Snapshot(pool) == before);
  const BlockId negative[] = {2, -1};
  EXPECT_THROW(pool.Free(negative, 2), IndexOutOfRange);
  EXPECT_TRUE(Snapshot(pool) == before);
  const BlockId already_free[] = {0, 5};
  EXPECT_THROW(pool.Free(already_free, 2), InvalidArgument);
  EXPECT_TRUE(Snapshot(pool) == before);
  const BlockId twice[] = {3, 1, 3};  // block 3 has one reference: the second drop is a double free
  EXPECT_THROW(pool.Free(twice, 3), InvalidArgument);
  EXPECT_TRUE(Snapshot(pool) == before);
  EXPECT_THROW(pool.Free(held.data(), -1), InvalidArgument);
  pool.CheckInvariants();
}

TEST(BlockPoolTest, RepeatedIdInFreeBatchDropsOneReferenceEach) {
  BlockPool pool(3);
  std::vector<BlockId> ids = pool.Allocate(1);
  pool.IncRef(ids.data(), 1);
  const BlockId twice[] = {ids[0], ids[0]};
  pool.Free(twice, 2);
  pool.CheckInvariants();
  EXPECT_EQ(pool.RefCount(ids[0]), 0);
  EXPECT_EQ(pool.num_free_blocks(), 3);
}

TEST(BlockPoolTest, IncRefValidatesWholeBatch) {
  BlockPool pool(4);
  std::vector<BlockId> held = pool.Allocate(2);
  const PoolSnapshot before = Snapshot(pool);
  const BlockId with_free[] = {0, 1, 3};
  EXPECT_THROW(pool.IncRef(with_free, 3), InvalidArgument);
  EXPECT_TRUE(Snapshot(pool) == before);
  const BlockId out_of_range[] = {0, 4};
  EXPECT_THROW(pool.IncRef(out_of_range, 2), IndexOutOfRange);
  EXPECT_TRUE(Snapshot(pool) == before);
  pool.CheckInvariants();
}

TEST(BlockPoolTest, RefCountsReadsEachIdAndRejectsBadOnes) {
  BlockPool pool(5);
  std::vector<BlockId> held = pool.Allocate(3);  // 0, 1, 2 with one reference each
  pool.IncRef(held.data(), 2);                   // 0 and 1: two
  const BlockId ids[] = {2, 0, 4, 1, 0};
  int32_t counts[5] = {-1, -1, -1, -1, -1};
  pool.RefCounts(ids, 5, counts);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(counts[i], pool.RefCount(ids[i])) << "id " << ids[i];
  EXPECT_EQ(counts[0], 1);
  EXPECT_EQ(counts[2], 0);
  const BlockId bad[] = {0, 5};
  EXPECT_THROW(pool.RefCounts(bad, 2, counts), IndexOutOfRange);
  const BlockId negative[] = {1, -1};
  EXPECT_THROW(pool.RefCounts(negative, 2, counts), IndexOutOfRange);
  pool.CheckInvariants();
}

TEST(BlockPoolTest, RandomOperationsKeepInvariants) {
  BlockPool pool(64);
  std::mt19937 rng(7);
  std::vector<BlockId> references;  // one entry per reference held
  for (int step = 0; step < 3000; ++step) {
    const int op = int(rng() % 3);
    if (op == 0) {
      const int64_t n = rng() % 8;
      if (pool.CanAllocate(n)) {
        for (BlockId id : pool.Allocate(n)) references.push_back(id);
      } else {
        EXPECT_THROW(pool.Allocate(n), OutOfBlocksError);
      }
    } else if (op == 1 && !references.empty()) {
      const BlockId id = references[rng() % references.size()];
      pool.IncRef(&id, 1);
      references.push_back(id);
    } else if (!references.empty()) {
      std::shuffle(references.begin(), references.end(), rng);
      const size_t n = std::min<size_t>(references.size(), rng() % 6);
      pool.Free(references.data() + references.size() - n, int64_t(n));
      references.resize(references.size() - n);
    }
    pool.CheckInvariants();
    std::vector<int32_t> expected(64, 0);
    for (BlockId id : references) ++expected[id];
    for (int32_t id = 0; id < 64; ++id) ASSERT_EQ(pool.RefCount(id), expected[id]) << id;
  }
}

TEST(BlockPoolConcurrentTest, StressAllocateFreeAccountsForEveryBlock) {
  constexpr int kThreads = 4;
  constexpr int kIterations = 20000;
  BlockPool pool(256);
  std::atomic<int64_t> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&pool, &failures, t] {
      std::mt19937 rng(t);
      std::vector<BlockId> mine;
      for (int i = 0; i < kIterations; ++i) {
        const int64_t n = 1 + rng() % 16;
        try {
          std::vector<BlockId> got = pool.Allocate(n);
          pool.IncRef(got.data(), int64_t(got.size()));
          pool.Free(got.data(), int64_t(got.size()));
          mine.insert(mine.end(), got.begin(), got.end());
        } catch (const OutOfBlocksError&) {
          failures.fetch_add(1);
        }
        if (mine.size() > 48 || (i % 7 == 0 && !mine.empty())) {
          pool.Free(mine.data(), int64_t(mine.size()));
          mine.clear();
        }
      }
      pool.Free(mine.data(), int64_t(mine.size()));
    });
  }
  for (auto& thread : threads) thread.join();
  pool.CheckInvariants();
  EXPECT_EQ(pool.num_free_blocks(), 256);
  const BlockPool::Stats s = pool.stats();
  EXPECT_EQ(s.blocks_allocated, s.blocks_freed);
  EXPECT_EQ(s.allocation_failures, failures.load());
}

TEST(BlockPoolTest, FindUnheldNamesTheFirstFreeBlock) {
  BlockPool pool(4);
  const std::vector<BlockId> ids = pool.Allocate(2);  // 0 and 1; 2 and 3 free
  const std::vector<BlockId> held = {1, 0, 1};
  EXPECT_EQ(pool.FindUnheld(held.data(), 3), -1);
  const std::vector<BlockId> some_free = {0, 3, 2};
  EXPECT_EQ(pool.FindUnheld(some_free.data(), 3), 1);
  EXPECT_EQ(pool.FindUnheld(nullptr, 0), -1);
  const std::vector<BlockId> bad = {0, 4};
  EXPECT_THROW(pool.FindUnheld(bad.data(), 2), IndexOutOfRange);
  pool.Free(&ids[0], 1);
  EXPECT_EQ(pool.FindUnheld(held.data(), 3), 1);
  pool.CheckInvariants();
}

}  // namespace
}  // namespace ferrum_kv
