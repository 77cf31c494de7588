#include "ferrum_kv/eviction_policy.h"

#include <algorithm>
#include <cassert>
#include <queue>
#include <tuple>
#include <vector>

#include "ferrum_kv/support/check.h"
#include "ferrum_kv/support/index_list.h"

namespace ferrum_kv {

std::string EvictionPolicyName(EvictionPolicyKind kind) {
  switch (kind) {
    case EvictionPolicyKind::kLru: return "lru";
    case EvictionPolicyKind::kFifo: return "fifo";
    case EvictionPolicyKind::kPriorityLru: return "priority_lru";
    case EvictionPolicyKind::kClock: return "clock";
  }
  return "unknown";
}

EvictionPolicyKind ParseEvictionPolicy(const std::string& name) {
  if (name == "lru") return EvictionPolicyKind::kLru;
  if (name == "fifo") return EvictionPolicyKind::kFifo;
  if (name == "priority_lru") return EvictionPolicyKind::kPriorityLru;
  if (name == "clock") return EvictionPolicyKind::kClock;
  FKV_THROW(InvalidArgument, "eviction_policy must be 'lru', 'fifo', 'priority_lru' or 'clock', "
                             "got '" << name << "'");
}

namespace {

class LruPolicy final : public EvictionPolicy {
 public:
  explicit LruPolicy(int32_t num_blocks) : order_(num_blocks) {}
  void Add(BlockId block, int32_t, uint64_t) override { order_.PushBack(block); }
  void Remove(BlockId block) override { order_.Remove(block); }
  BlockId PopVictim() override { return order_.PopFront(); }
  bool Contains(BlockId block) const override { return order_.Contains(block); }
  int64_t size() const override { return order_.size(); }

 private:
  IndexList order_;  // head: least recently released
};

// The ring is an IndexList whose front is under the hand. A block's publication order tells a
// first release (a new publication) from a release after reuse (the same publication again).
class ClockPolicy final : public EvictionPolicy {
 public:
  explicit ClockPolicy(int32_t num_blocks)
      : ring_(num_blocks),
        referenced_(static_cast<size_t>(num_blocks), false),
        publication_(static_cast<size_t>(num_blocks), 0) {}

  void Add(BlockId block, int32_t, uint64_t publish_order) override {
    referenced_[block] = publication_[block] == publish_order;
    publication_[block] = publish_order;
    ring_.PushBack(block);
  }
  void Remove(BlockId block) override { ring_.Remove(block); }
  BlockId PopVictim() override {
    // Terminates: one pass clears every bit.
    while (true) {
      const BlockId block = ring_.PopFront();
      if (!referenced_[block]) return block;
      referenced_[block] = false;  // second chance
      ring_.PushBack(block);
    }
  }
  bool Contains(BlockId block) const override { return ring_.Contains(block); }
  int64_t size() const override { return ring_.size(); }

 private:
  IndexList ring_;
  std::vector<bool> referenced_;
  std::vector<uint64_t> publication_;  // the publish_order of the block's last Add (0: none)
};

// A min-heap of (key, block, version) with lazy deletion: Remove only clears the block's flag,
// and PopVictim skips entries whose block is gone or was re-added since (older version). The heap
// is rebuilt (in place) when stale entries outnumber live ones, so it stays O(size()), and when
// it reaches the capacity reserved at construction, so that no call allocates (nothing throws:
// the cache manager changes the policy after the point where its calls may fail).
class HeapPolicy final : public EvictionPolicy {
 public:
  HeapPolicy(int32_t num_blocks, bool by_priority)
      : by_priority_(by_priority),
        contained_(static_cast<size_t>(num_blocks), false),
        version_(static_cast<size_t>(num_blocks), 0) {
    heap_.reserve(2 * size_t(num_blocks) + 64);
  }

  void Add(BlockId block, int32_t priority, uint64_t publish_order) override {
    assert(!contained_[block]);
    if (heap_.size() == heap_.capacity()) Rebuild();  // leaves at most num_blocks - 1 entries
    contained_[block] = true;
    ++size_;
    // Priority LRU: lower priority first, then least recently released (a release counter).
    const Key key = by_priority_ ? Key{priority, ++release_clock_} : Key{0, publish_order};
    heap_.push(Entry{key, block, ++version_[block]});
  }

  void Remove(BlockId block) override {
    assert(contained_[block]);
    contained_[block] = false;
    --size_;
    if (int64_t(heap_.size()) > 2 * size_ + 64) Rebuild();
  }

  BlockId PopVictim() override {
    assert(size_ > 0);
    while (true) {
      const Entry top = heap_.top();
      heap_.pop();
      if (contained_[top.block] && version_[top.block] == top.version) {
        contained_[top.block] = false;
        --size_;
        return top.block;
      }
    }
  }

  bool Contains(BlockId block) const override { return contained_[block]; }
  int64_t size() const override { return size_; }

 private:
  using Key = std::pair<int64_t, uint64_t>;
  struct Entry {
    Key key;
    BlockId block;
    uint64_t version;
    bool operator>(const Entry& other) const { return key > other.key; }
  };

  // The heap's container and its capacity (priority_queue keeps them protected).
  class Heap : public std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> {
   public:
    void reserve(size_t n) { c.reserve(n); }
    size_t capacity() const { return c.capacity(); }
    // Drops the entries for which stale(entry) holds and restores the heap order; no allocation.
    template <typename Stale>
    void Compact(Stale stale) {
      c.erase(std::remove_if(c.begin(), c.end(), stale), c.end());
      std::make_heap(c.begin(), c.end(), comp);
    }
  };

  void Rebuild() {
    heap_.Compact([this](const Entry& e) {
      return !contained_[e.block] || version_[e.block] != e.version;
    });
  }

  const bool by_priority_;
  std::vector<bool> contained_;
  std::vector<uint64_t> version_;
  Heap heap_;
  uint64_t release_clock_ = 0;
  int64_t size_ = 0;
};

}  // namespace

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionPolicyKind kind, int32_t num_blocks) {
  switch (kind) {
    case EvictionPolicyKind::kLru: return std::make_unique<LruPolicy>(num_blocks);
    case EvictionPolicyKind::kFifo: return std::make_unique<HeapPolicy>(num_blocks, false);
    case EvictionPolicyKind::kPriorityLru: return std::make_unique<HeapPolicy>(num_blocks, true);
    case EvictionPolicyKind::kClock: return std::make_unique<ClockPolicy>(num_blocks);
  }
  return nullptr;
}

}  // namespace ferrum_kv
