// BlockPool: a fixed set of block ids [0, num_blocks) with a reference count each.
//
// A block is free (ref_count 0, on the free list) or used (ref_count >= 1). Allocate hands out
// free blocks with ref_count 1; IncRef shares a used block; Free drops one reference and returns
// the block to the free list when the count reaches 0.
//
// Reuse order: Allocate takes blocks from the head of the free list and Free appends to its tail,
// so the least recently freed block is reused first (a freshly constructed pool hands out
// 0, 1, 2, ...). Within one Free call, blocks are appended in the order in which their ref
// count reaches 0.
//
// Invariants (CheckInvariants):
//   num_free_blocks + num_used_blocks == num_blocks
//   block on the free list  <=>  ref_count == 0
//   free-list length == num_free_blocks
//
// Errors: every call is all-or-nothing. Allocate(n) with fewer than n free blocks throws
// OutOfBlocksError; Free/IncRef validate the whole batch first: an id outside [0, num_blocks)
// throws IndexOutOfRange, dropping more references than a block holds (double free) or sharing a
// free block throws InvalidArgument; a negative count throws InvalidArgument.
//
// Thread safety: thread-safe (one mutex over the free list and ref counts; statistics are atomic
// and can be read without the mutex).
// Complexity: O(1) per block, O(n) per batched call, no allocation on the hot path.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "ferrum_kv/support/index_list.h"
#include "ferrum_kv/support/mutex.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

class BlockPool {
 public:
  struct Stats {
    int64_t num_blocks = 0;
    int64_t num_free_blocks = 0;
    int64_t blocks_allocated = 0;     // blocks handed out by Allocate, over the pool's life
    int64_t blocks_freed = 0;         // blocks returned to the free list
    int64_t allocation_failures = 0;  // Allocate calls that threw OutOfBlocksError
  };

  // The most references one block can hold.
  static constexpr int32_t kMaxRefCount = INT32_MAX;

  // Throws InvalidArgument unless 1 <= num_blocks <= kMaxBlocks.
  explicit BlockPool(int64_t num_blocks);
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Writes n fresh block ids (ref_count 1) to out[0..n).
  void Allocate(int64_t n, BlockId* out) FKV_EXCLUDES(mu_);
  std::vector<BlockId> Allocate(int64_t n) FKV_EXCLUDES(mu_);

  // Drops one reference from each ids[i] (an id may repeat: each occurrence drops one).
  void Free(const BlockId* ids, int64_t n) FKV_EXCLUDES(mu_);
  // Adds one reference to each ids[i], which must all be used blocks. InvalidArgument (nothing
  // changed) if a count would pass kMaxRefCount.
  void IncRef(const BlockId* ids, int64_t n) FKV_EXCLUDES(mu_);

  // Throws IndexOutOfRange for an id outside [0, num_blocks).
  int32_t RefCount(BlockId id) const FKV_EXCLUDES(mu_);
  // out[i] = RefCount(ids[i]) for i < n, under one lock. Throws IndexOutOfRange as RefCount.
  void RefCounts(const BlockId* ids, int64_t n, int32_t* out) const FKV_EXCLUDES(mu_);
  // The first i < n with RefCount(ids[i]) == 0 (a free block), or -1 if every one is in use;
  // under one lock. Throws IndexOutOfRange as RefCount.
  int64_t FindUnheld(const BlockId* ids, int64_t n) const FKV_EXCLUDES(mu_);
  // True if n blocks could be allocated now. InvalidArgument for n < 0 (as Allocate).
  bool CanAllocate(int64_t n) const {
    CheckCount(n);
    return n <= num_free_blocks();
  }

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free_blocks() const { return num_free_.load(std::memory_order_relaxed); }
  int64_t num_used_blocks() const { return num_blocks_ - num_free_blocks(); }
  Stats stats() const;

  // Throws InvariantError if an invariant above does not hold.
  void CheckInvariants() const FKV_EXCLUDES(mu_);

 private:
  void CheckCount(int64_t n) const;
  void CheckId(BlockId id) const {
    if (id < 0 || id >= num_blocks_) ThrowBadId(id);
  }
  [[noreturn]] void ThrowBadId(BlockId id) const;
  // Undoes what a failed Free did to ids[0..n): re-adds the references and takes blocks that
  // reached 0 off the free list again.
  void UndoFree(const BlockId* ids, int64_t n) FKV_REQUIRES(mu_);

  const int32_t num_blocks_;
  mutable Mutex mu_;
  IndexList free_list_ FKV_GUARDED_BY(mu_);
  std::vector<int32_t> ref_counts_ FKV_GUARDED_BY(mu_);

  std::atomic<int64_t> num_free_;
  std::atomic<int64_t> blocks_allocated_{0};
  std::atomic<int64_t> blocks_freed_{0};
  std::atomic<int64_t> allocation_failures_{0};
};

}  // namespace ferrum_kv
