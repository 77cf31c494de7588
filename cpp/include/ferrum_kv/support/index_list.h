// IndexList: an intrusive doubly linked list over the integers [0, capacity), stored as two int32
// links per index plus a sentinel. Used for free lists and eviction orders, where every
// operation must be O(1) and allocation-free.
//
// Invariants: an index is in the list at most once; Contains(i) <=> links of i are not kDetached;
// size() equals the number of indices reachable from the sentinel.
// Thread safety: thread-compatible (the owner serialises access).
// Preconditions are checked by assert() only: callers validate indices first.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ferrum_kv {

class IndexList {
 public:
  explicit IndexList(int32_t capacity)
      : next_(std::size_t(capacity) + 1, kDetached),
        prev_(std::size_t(capacity) + 1, kDetached),
        sentinel_(capacity) {
    next_[sentinel_] = prev_[sentinel_] = sentinel_;
  }

  int32_t capacity() const { return sentinel_; }
  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  bool Contains(int32_t i) const { return next_[i] != kDetached; }

  int32_t Front() const {
    assert(!empty());
    return next_[sentinel_];
  }
  // Next index after i, or -1 at the end. Walks the list in order (for validators and tests).
  int32_t Next(int32_t i) const { return next_[i] == sentinel_ ? -1 : next_[i]; }

  void PushBack(int32_t i) { InsertBefore(sentinel_, i); }
  void PushFront(int32_t i) { InsertBefore(next_[sentinel_], i); }

  void Remove(int32_t i) {
    assert(i >= 0 && i < sentinel_ && Contains(i));
    next_[prev_[i]] = next_[i];
    prev_[next_[i]] = prev_[i];
    next_[i] = prev_[i] = kDetached;
    --size_;
  }

  int32_t PopFront() {
    const int32_t i = Front();
    Remove(i);
    return i;
  }

  // Pops the first n indices into out[0..n) in one splice (n <= size()).
  void PopFront(int64_t n, int32_t* out) {
    assert(n >= 0 && n <= size_);
    int32_t i = next_[sentinel_];
    for (int64_t k = 0; k < n; ++k) {
      out[k] = i;
      const int32_t following = next_[i];
      next_[i] = prev_[i] = kDetached;
      i = following;
    }
    next_[sentinel_] = i;
    prev_[i] = sentinel_;
    size_ -= n;
  }

 private:
  static constexpr int32_t kDetached = -1;

  void InsertBefore(int32_t position, int32_t i) {
    assert(i >= 0 && i < sentinel_ && !Contains(i));
    next_[i] = position;
    prev_[i] = prev_[position];
    next_[prev_[position]] = i;
    prev_[position] = i;
    ++size_;
  }

  std::vector<int32_t> next_;
  std::vector<int32_t> prev_;
  int32_t sentinel_;
  int64_t size_ = 0;
};

}  // namespace ferrum_kv
