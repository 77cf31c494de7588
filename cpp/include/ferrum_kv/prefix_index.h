// PrefixIndex: the published content of the device tier. Maps content hash <-> block for every
// cached block, keeps the evictable subset (cached blocks that no sequence holds) in an
// EvictionPolicy, and logs CacheEvents.
//
// The index only records; the cache manager keeps the reference counts: each cached block holds
// one pool reference on behalf of the index (so ref_count = tables holding it + 1), and a cached
// block is evictable exactly when that is its only reference.
//
// Invariants: Find(HashOf(b)) == b for every cached b; size() == number of cached blocks;
// evictable blocks are cached.
// Thread safety: thread-compatible (the cache manager's mutex guards it).
// Complexity: Find / Insert / Erase O(1) expected; eviction order per EvictionPolicy.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/cache_event.h"
#include "ferrum_kv/eviction_policy.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

class PrefixIndex {
 public:
  PrefixIndex(int32_t num_blocks, EvictionPolicyKind policy);

  // The block holding hash, or kNullBlock.
  BlockId Find(const BlockHash& hash) const;
  bool IsCached(BlockId block) const { return publish_order_[block] != 0; }
  // Precondition: IsCached(block).
  const BlockHash& HashOf(BlockId block) const { return entries_[block]->first; }
  // When block was published (1, 2, ...); 0 if it is not cached.
  uint64_t PublishOrder(BlockId block) const { return publish_order_[block]; }
  int64_t size() const { return int64_t(by_hash_.size()); }

  // Makes block findable under hash. Preconditions: hash absent, block not cached.
  void Insert(const BlockHash& hash, BlockId block);
  // Makes block unfindable (and not evictable). Precondition: block cached.
  void Erase(BlockId block);
  // Erases every block; one kAllCleared event.
  void Clear();
  // The cached blocks, in block-id order.
  std::vector<BlockId> CachedBlocks() const;

  EvictionPolicy& evictable() { return *evictable_; }
  const EvictionPolicy& evictable() const { return *evictable_; }

  // Moves out the events logged since the last drain, oldest first.
  std::vector<CacheEvent> DrainEvents();
  int64_t events_dropped() const { return events_dropped_; }

 private:
  void Log(CacheEvent::Kind kind, const BlockHash& hash, BlockId block);

  using Map = std::unordered_map<BlockHash, BlockId, BlockHashHasher>;
  // Reserved for num_blocks entries up front, so it never rehashes and the iterators in entries_
  // stay valid: Erase and HashOf need no hashing.
  Map by_hash_;
  std::vector<Map::iterator> entries_;  // entries_[b] is b's entry while b is cached
  std::vector<uint64_t> publish_order_;
  uint64_t publish_clock_ = 0;
  std::unique_ptr<EvictionPolicy> evictable_;
  std::deque<CacheEvent> events_;
  uint64_t next_event_ = 1;
  int64_t events_dropped_ = 0;
};

}  // namespace ferrum_kv
