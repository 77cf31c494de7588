#include "ferrum_kv/block_pool.h"

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

namespace {
int32_t CheckedNumBlocks(int64_t num_blocks) {
  FKV_CHECK_ARG(num_blocks >= 1 && num_blocks <= kMaxBlocks,
                "num_blocks must be in [1, " << kMaxBlocks << "], got " << num_blocks);
  return static_cast<int32_t>(num_blocks);
}
}  // namespace

BlockPool::BlockPool(int64_t num_blocks)
    : num_blocks_(CheckedNumBlocks(num_blocks)),
      free_list_(num_blocks_),
      ref_counts_(size_t(num_blocks_), 0),
      num_free_(num_blocks_) {
  MutexLock lock(&mu_);
  for (int32_t id = 0; id < num_blocks_; ++id) free_list_.PushBack(id);
}

void BlockPool::CheckCount(int64_t n) const {
  FKV_CHECK_ARG(n >= 0, "block count must be >= 0, got " << n);
}

void BlockPool::ThrowBadId(BlockId id) const {
  FKV_THROW(::ferrum_kv::IndexOutOfRange,
            "block id " << id << " out of range [0, " << num_blocks_ << ")");
}

void BlockPool::Allocate(int64_t n, BlockId* out) {
  CheckCount(n);
  MutexLock lock(&mu_);
  if (n > free_list_.size()) {
    allocation_failures_.fetch_add(1, std::memory_order_relaxed);
    FKV_THROW(OutOfBlocksError, "cannot allocate " << n << " blocks: only " << free_list_.size()
                                                   << " of " << num_blocks_ << " are free");
  }
  free_list_.PopFront(n, out);
  for (int64_t i = 0; i < n; ++i) ref_counts_[out[i]] = 1;
  num_free_.store(free_list_.size(), std::memory_order_relaxed);
  blocks_allocated_.fetch_add(n, std::memory_order_relaxed);
}

std::vector<BlockId> BlockPool::Allocate(int64_t n) {
  CheckCount(n);
  std::vector<BlockId> ids(static_cast<size_t>(n));
  Allocate(n, ids.data());
  return ids;
}

void BlockPool::UndoFree(const BlockId* ids, int64_t n) {
  for (int64_t i = n - 1; i >= 0; --i) {
    if (ref_counts_[ids[i]] == 0) free_list_.Remove(ids[i]);
    ++ref_counts_[ids[i]];
  }
}

void BlockPool::Free(const BlockId* ids, int64_t n) {
  CheckCount(n);
  MutexLock lock(&mu_);
  // One pass: drop each reference and append blocks that reach 0 to the free list. A repeated id
  // is caught when its count is already 0. On the first bad id, undo what this call did (in
  // reverse, so that each block is restored exactly once) and throw.
  for (int64_t i = 0; i < n; ++i) {
    const BlockId id = ids[i];
    if (id < 0 || id >= num_blocks_) {
      UndoFree(ids, i);
      FKV_THROW(IndexOutOfRange,
                "block id " << id << " out of range [0, " << num_blocks_ << ")");
    }
    if (ref_counts_[id] == 0) {
      UndoFree(ids, i);
      FKV_THROW(InvalidArgument, "cannot free block " << id
                                     << ": it is already free (double free); nothing was freed");
    }
    if (--ref_counts_[id] == 0) free_list_.PushBack(id);
  }
  const int64_t returned = free_list_.size() - num_free_.load(std::memory_order_relaxed);
  num_free_.store(free_list_.size(), std::memory_order_relaxed);
  blocks_freed_.fetch_add(returned, std::memory_order_relaxed);
}

void BlockPool::IncRef(const BlockId* ids, int64_t n) {
  CheckCount(n);
  MutexLock lock(&mu_);
  for (int64_t i = 0; i < n; ++i) {
    CheckId(ids[i]);
    FKV_CHECK_ARG(ref_counts_[ids[i]] > 0,
                  "cannot share block " << ids[i] << ": it is free; nothing was changed");
  }
  // An id may repeat, so the limit is checked as the counts grow; on overflow the increments
  // made so far are undone (in reverse).
  for (int64_t i = 0; i < n; ++i) {
    if (ref_counts_[ids[i]] == kMaxRefCount) {
      for (int64_t j = i - 1; j >= 0; --j) --ref_counts_[ids[j]];
      FKV_THROW(InvalidArgument, "cannot share block " << ids[i] << ": it already has "
                                     << kMaxRefCount << " references; nothing was changed");
    }
    ++ref_counts_[ids[i]];
  }
}

int32_t BlockPool::RefCount(BlockId id) const {
  CheckId(id);
  MutexLock lock(&mu_);
  return ref_counts_[id];
}

void BlockPool::RefCounts(const BlockId* ids, int64_t n, int32_t* out) const {
  CheckCount(n);
  for (int64_t i = 0; i < n; ++i) CheckId(ids[i]);
  MutexLock lock(&mu_);
  for (int64_t i = 0; i < n; ++i) out[i] = ref_counts_[ids[i]];
}

int64_t BlockPool::FindUnheld(const BlockId* ids, int64_t n) const {
  CheckCount(n);
  MutexLock lock(&mu_);
  for (int64_t i = 0; i < n; ++i) {
    CheckId(ids[i]);
    if (ref_counts_[ids[i]] == 0) return i;
  }
  return -1;
}

BlockPool::Stats BlockPool::stats() const {
  Stats s;
  s.num_blocks = num_blocks_;
  s.num_free_blocks = num_free_blocks();
  s.blocks_allocated = blocks_allocated_.load(std::memory_order_relaxed);
  s.blocks_freed = blocks_freed_.load(std::memory_order_relaxed);
  s.allocation_failures = allocation_failures_.load(std::memory_order_relaxed);
  return s;
}

void BlockPool::CheckInvariants() const {
  MutexLock lock(&mu_);
  int64_t zero_refs = 0;
  for (int32_t id = 0; id < num_blocks_; ++id) {
    const int32_t refs = ref_counts_[id];
    FKV_CHECK_INVARIANT(refs >= 0, "block " << id << " has ref_count " << refs);
    FKV_CHECK_INVARIANT((refs == 0) == free_list_.Contains(id),
                        "block " << id << " ref_count " << refs << ", on free list "
                                 << free_list_.Contains(id));
    zero_refs += refs == 0;
  }
  int64_t walked = 0;
  for (int32_t id = free_list_.empty() ? -1 : free_list_.Front(); id != -1;
       id = free_list_.Next(id)) {
    FKV_CHECK_INVARIANT(walked < num_blocks_, "free list has a cycle");
    ++walked;
  }
  FKV_CHECK_INVARIANT(walked == free_list_.size() && walked == zero_refs,
                      "free list walk " << walked << ", size " << free_list_.size()
                                        << ", blocks with ref_count 0: " << zero_refs);
  FKV_CHECK_INVARIANT(num_free_blocks() == free_list_.size(),
                      "num_free " << num_free_blocks() << " vs free list " << free_list_.size());
}

}  // namespace ferrum_kv
