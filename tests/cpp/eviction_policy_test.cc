#include "ferrum_kv/eviction_policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <random>
#include <vector>

#include "ferrum_kv/errors.h"

namespace ferrum_kv {
namespace {

std::vector<BlockId> Drain(EvictionPolicy& policy) {
  std::vector<BlockId> order;
  while (policy.size() > 0) order.push_back(policy.PopVictim());
  return order;
}

TEST(EvictionPolicyTest, LruEvictsLeastRecentlyReleased) {
  auto lru = MakeEvictionPolicy(EvictionPolicyKind::kLru, 8);
  lru->Add(5, 0, 1);
  lru->Add(2, 0, 0);
  lru->Add(7, 0, 2);
  lru->Remove(5);  // a prefix hit took it
  lru->Add(5, 0, 1);  // released again: now the most recent
  EXPECT_EQ(Drain(*lru), (std::vector<BlockId>{2, 7, 5}));
}

TEST(EvictionPolicyTest, FifoEvictsEarliestPublishedWhateverTheReleaseOrder) {
  auto fifo = MakeEvictionPolicy(EvictionPolicyKind::kFifo, 8);
  fifo->Add(5, 0, 30);
  fifo->Add(2, 0, 10);
  fifo->Add(7, 0, 20);
  fifo->Remove(2);
  fifo->Add(2, 0, 10);  // reused and released again: keeps its publication order
  EXPECT_TRUE(fifo->Contains(7));
  EXPECT_EQ(Drain(*fifo), (std::vector<BlockId>{2, 7, 5}));
}

TEST(EvictionPolicyTest, PriorityLruEvictsLowPriorityFirstThenLru) {
  auto policy = MakeEvictionPolicy(EvictionPolicyKind::kPriorityLru, 8);
  policy->Add(1, 50, 0);
  policy->Add(2, 10, 0);
  policy->Add(3, 50, 0);
  policy->Add(4, 10, 0);
  policy->Remove(2);
  policy->Add(2, 10, 0);
  EXPECT_EQ(Drain(*policy), (std::vector<BlockId>{4, 2, 1, 3}));
}

TEST(EvictionPolicyTest, ClockGivesReusedBlocksASecondChance) {
  auto clock = MakeEvictionPolicy(EvictionPolicyKind::kClock, 8);
  clock->Add(5, 0, 1);  // first releases: no reference bit
  clock->Add(2, 0, 2);
  clock->Add(7, 0, 3);
  clock->Remove(5);     // a prefix hit took it
  clock->Add(5, 0, 1);  // released again, same publication: referenced
  clock->Remove(2);
  clock->Add(2, 0, 9);  // republished (evicted and reused meanwhile): a new block, no bit
  // Ring: 7, 5*, 2. The hand evicts 7, passes 5 (clearing it), evicts 2, then 5.
  EXPECT_EQ(clock->PopVictim(), 7);
  clock->Add(6, 0, 4);  // ring: 5*, 2, 6
  EXPECT_EQ(Drain(*clock), (std::vector<BlockId>{2, 6, 5}));
}

TEST(EvictionPolicyTest, RandomOperationsMatchAReferenceOrder) {
  for (EvictionPolicyKind kind :
       {EvictionPolicyKind::kLru, EvictionPolicyKind::kFifo, EvictionPolicyKind::kPriorityLru}) {
    constexpr int32_t kBlocks = 40;
    auto policy = MakeEvictionPolicy(kind, kBlocks);
    std::mt19937 rng(9);
    // Reference: (key..., block) tuples; the victim is the minimum.
    struct Item { int64_t a; uint64_t b; BlockId block; };
    std::vector<Item> model;
    std::vector<uint64_t> published(kBlocks);
    for (int32_t b = 0; b < kBlocks; ++b) published[b] = rng() % 1000 * kBlocks + b;
    uint64_t clock = 0;
    for (int step = 0; step < 4000; ++step) {
      const BlockId block = BlockId(rng() % kBlocks);
      const int op = int(rng() % 3);
      auto it = std::find_if(model.begin(), model.end(),
                             [block](const Item& i) { return i.block == block; });
      ASSERT_EQ(policy->Contains(block), it != model.end());
      if (op == 0 && it == model.end()) {
        const int32_t priority = int32_t(rng() % 3);
        policy->Add(block, priority, published[block]);
        ++clock;
        if (kind == EvictionPolicyKind::kLru) model.push_back({0, clock, block});
        if (kind == EvictionPolicyKind::kFifo) model.push_back({0, published[block], block});
        if (kind == EvictionPolicyKind::kPriorityLru) model.push_back({priority, clock, block});
      } else if (op == 1 && it != model.end()) {
        policy->Remove(block);
        model.erase(it);
      } else if (op == 2 && !model.empty()) {
        auto victim = std::min_element(model.begin(), model.end(), [](const Item& x, const Item& y) {
          return std::tie(x.a, x.b) < std::tie(y.a, y.b);
        });
        ASSERT_EQ(policy->PopVictim(), victim->block) << EvictionPolicyName(kind);
        model.erase(victim);
      }
      ASSERT_EQ(policy->size(), int64_t(model.size()));
    }
  }
}

// CLOCK against a second-chance model over a std::deque: the ring in order, with the bits.
TEST(EvictionPolicyTest, ClockRandomOperationsMatchASecondChanceModel) {
  constexpr int32_t kBlocks = 40;
  auto policy = MakeEvictionPolicy(EvictionPolicyKind::kClock, kBlocks);
  std::mt19937 rng(11);
  std::deque<std::pair<BlockId, bool>> ring;
  std::vector<uint64_t> published(kBlocks, 0), last_added(kBlocks, 0);
  uint64_t next_publication = 1;
  for (int step = 0; step < 6000; ++step) {
    const BlockId block = BlockId(rng() % kBlocks);
    const int op = int(rng() % 4);
    auto it = std::find_if(ring.begin(), ring.end(),
                           [block](const auto& e) { return e.first == block; });
    ASSERT_EQ(policy->Contains(block), it != ring.end());
    if (op == 0 && it == ring.end()) {
      if (published[block] == 0 || rng() % 4 == 0) published[block] = next_publication++;
      policy->Add(block, 0, published[block]);
      ring.emplace_back(block, last_added[block] == published[block]);
      last_added[block] = published[block];
    } else if (op == 1 && it != ring.end()) {
      policy->Remove(block);
      ring.erase(it);
    } else if (op >= 2 && !ring.empty()) {
      while (ring.front().second) {
        ring.emplace_back(ring.front().first, false);
        ring.pop_front();
      }
      ASSERT_EQ(policy->PopVictim(), ring.front().first);
      ring.pop_front();
    }
    ASSERT_EQ(policy->size(), int64_t(ring.size()));
  }
}

TEST(EvictionPolicyTest, NamesRoundTrip) {
  for (const char* name : {"lru", "fifo", "priority_lru", "clock"}) {
    EXPECT_EQ(EvictionPolicyName(ParseEvictionPolicy(name)), name);
  }
  EXPECT_THROW(ParseEvictionPolicy("arc"), InvalidArgument);
}

}  // namespace
}  // namespace ferrum_kv
