// PrefixIndex: the published content of the device tier. Maps prefix key (prefix_key.h) <-> block
// for every cached block, keeps the evictable subset (cached blocks that no sequence holds) in an
// EvictionPolicy, and, when built with events, logs CacheEvents named by the blocks' public
// SHA-256 chain hashes (block_hash.h).
//
// The index only records; the cache manager keeps the reference counts: each cached block holds
// one pool reference on behalf of the index (so ref_count = tables holding it + 1), and a cached
// block is evictable exactly when that is its only reference.
//
// The key -> block map is an open-addressing table with linear probing over a power-of-two number
// of slots (at least twice num_blocks, so it is at most half full and never grows); a slot holds
// the key's low 32 bits (its tag, which also gives its home slot) and the block, 8 bytes; the
// whole key is compared through KeyOf(block). Erase shifts the following entries back (no
// tombstones).
//
// Invariants: Find(KeyOf(b)) == b for every cached b; size() == number of cached blocks == number
// of occupied slots; evictable blocks are cached.
// Thread safety: thread-compatible (the cache manager's mutex guards it).
// Complexity: Find / InsertIfAbsent / Erase O(1) expected; eviction order per EvictionPolicy;
// Clear and CachedBlocks O(num_blocks).
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/cache_event.h"
#include "ferrum_kv/eviction_policy.h"
#include "ferrum_kv/prefix_key.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

class PrefixIndex {
 public:
  PrefixIndex(int32_t num_blocks, EvictionPolicyKind policy, bool log_events);

  bool logs_events() const { return log_events_; }

  // The block cached under key, or kNullBlock.
  BlockId Find(const PrefixKey& key) const;
  bool IsCached(BlockId block) const { return publish_order_[block] != 0; }
  // Precondition: IsCached(block).
  const PrefixKey& KeyOf(BlockId block) const { return key_of_[block]; }
  // When block was published (1, 2, ...); 0 if it is not cached.
  uint64_t PublishOrder(BlockId block) const { return publish_order_[block]; }
  int64_t size() const { return size_; }

  // Hint: Find(key) will follow soon (loads its home slot's cache line).
  void Prefetch(const PrefixKey& key) const { __builtin_prefetch(&slots_[Home(Tag(key))]); }
  // Hint: InsertBatch of (key, block) will follow (loads the lines its chunk pass reads).
  void PrefetchInsertion(const PrefixKey& key, BlockId block) const {
    __builtin_prefetch(&slots_[Home(Tag(key))]);
    __builtin_prefetch(&publish_order_[block]);
  }
  // Makes block findable under key and returns true, or returns false and changes nothing if
  // another block is cached under key. content_hash (its SHA-256 chain hash) names it in the
  // events: required when logs_events(), ignored otherwise. Precondition: block not cached.
  bool InsertIfAbsent(const PrefixKey& key, BlockId block, const BlockHash* content_hash);
  // For i < n in order: unless blocks[i] is cached already, InsertIfAbsent(keys[i], blocks[i],
  // content_hashes ? &content_hashes[i] : nullptr); appends the blocks it inserted to *inserted.
  // Reads a chunk's home slots and block records before inserting any of it, so that their
  // cache misses overlap instead of queueing behind one another (and wait for lines that
  // PrefetchInsertion requested, if they are still on their way).
  void InsertBatch(const PrefixKey* keys, const BlockId* blocks, const BlockHash* content_hashes,
                   int64_t n, std::vector<BlockId>* inserted);
  // Makes block unfindable (and not evictable). Precondition: block cached.
  void Erase(BlockId block);
  // Erases every block; one kAllCleared event. Does not fail (no allocation).
  void Clear();
  // The cached blocks, in block-id order.
  std::vector<BlockId> CachedBlocks() const;

  EvictionPolicy& evictable() { return *evictable_; }
  const EvictionPolicy& evictable() const { return *evictable_; }

  // Moves out the events logged since the last drain, oldest first (none without events).
  std::vector<CacheEvent> DrainEvents();
  int64_t events_dropped() const { return events_dropped_; }

  // Throws InvariantError unless the table and the per-block records agree (see Invariants).
  void CheckInvariants() const;

 private:
  struct Slot {
    uint32_t tag = 0;            // Tag(key)
    BlockId block = kNullBlock;  // kNullBlock: empty
  };
  static uint32_t Tag(const PrefixKey& key) { return uint32_t(key.lo); }
  // The slot count is at most 2^32 (num_blocks is an int32), so the tag holds the home.
  size_t Home(uint32_t tag) const { return size_t(tag) & slot_mask_; }
  void Log(CacheEvent::Kind kind, const BlockHash& hash, BlockId block);

  const bool log_events_;
  std::vector<Slot> slots_;
  size_t slot_mask_;
  int64_t size_ = 0;
  std::vector<PrefixKey> key_of_;        // key_of_[b]: b's key while b is cached
  std::vector<BlockHash> content_hash_;  // content_hash_[b]: b's SHA-256 name (events only)
  std::vector<uint64_t> publish_order_;
  uint64_t publish_clock_ = 0;
  std::unique_ptr<EvictionPolicy> evictable_;
  std::deque<CacheEvent> events_;
  uint64_t next_event_ = 1;
  int64_t events_dropped_ = 0;
};

}  // namespace ferrum_kv
