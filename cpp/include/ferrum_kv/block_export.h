// BlockExportQueue: published device blocks waiting to be copied out to the storage tiers
// (docs/tiers.md), and those being copied out.
//
// The cache manager offers each block it publishes (with its public SHA-256 chain hash) and, if
// the offer is taken, adds one pool reference to the block: a pin. A pinned block is neither free
// nor evictable, so eviction cannot hand its memory to another sequence while the tier writer
// reads it; full published blocks are never written, so its bytes stay those that were published.
// Take moves the oldest pending blocks to the in-flight set (the writer copies their bytes out
// without the cache's lock); Finish removes them from it, and the manager then drops the pins.
//
// Invariants: 0 <= pending() + in_flight() <= capacity (the pins are bounded: a tier that is slow
// or down makes later offers fail, counted in skipped(), and never blocks the caller).
// Errors: none after construction (nothing allocates: Offer runs where the cache's calls may no
// longer fail). Preconditions (Finish of a block not in flight) are checked by CheckInvariants
// and asserted.
// Thread safety: thread-compatible (the cache manager's mutex guards it).
// Complexity: Offer and Take O(1) per block; Finish O(in_flight) per block.
#pragma once

#include <cstdint>
#include <vector>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

class BlockExportQueue {
 public:
  // Throws InvalidArgument unless capacity >= 1.
  explicit BlockExportQueue(int64_t capacity);

  int64_t capacity() const { return capacity_; }
  int64_t pending() const { return size_; }
  int64_t in_flight() const { return int64_t(in_flight_.size()); }
  int64_t offered() const { return offered_; }    // offers taken, ever
  int64_t skipped() const { return skipped_; }    // offers refused: the queue was full
  int64_t exported() const { return exported_; }  // blocks finished, ever

  // Queues block (the caller pins it) and returns true, or counts a skipped write and returns
  // false when pending() + in_flight() == capacity().
  bool Offer(BlockId block, const BlockHash& hash);
  // Moves up to max of the oldest pending blocks to the in-flight set: their ids to blocks[],
  // their hashes to hashes[]. Returns how many.
  int64_t Take(int64_t max, BlockId* blocks, BlockHash* hashes);
  // blocks[0, n) (taken) are copied out: they leave the in-flight set (the caller unpins them).
  void Finish(const BlockId* blocks, int64_t n);

  // Adds one to pins[b] for every pending or in-flight block b (pins has a slot per block).
  void CountPins(std::vector<int32_t>* pins) const;
  // Throws InvariantError unless pending() + in_flight() <= capacity().
  void CheckInvariants() const;

 private:
  struct Entry {
    BlockId block;
    BlockHash hash;
  };
  const int64_t capacity_;
  std::vector<Entry> ring_;  // capacity_ entries; pending ones from head_, size_ of them
  int64_t head_ = 0;
  int64_t size_ = 0;
  std::vector<BlockId> in_flight_;  // capacity_ reserved
  int64_t offered_ = 0;
  int64_t skipped_ = 0;
  int64_t exported_ = 0;
};

}  // namespace ferrum_kv
