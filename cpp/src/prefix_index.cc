#include "ferrum_kv/prefix_index.h"

#include <cassert>

namespace ferrum_kv {

PrefixIndex::PrefixIndex(int32_t num_blocks, EvictionPolicyKind policy)
    : entries_(static_cast<size_t>(num_blocks)),
      publish_order_(static_cast<size_t>(num_blocks), 0),
      evictable_(MakeEvictionPolicy(policy, num_blocks)) {
  by_hash_.reserve(static_cast<size_t>(num_blocks));
}

BlockId PrefixIndex::Find(const BlockHash& hash) const {
  auto it = by_hash_.find(hash);
  return it == by_hash_.end() ? kNullBlock : it->second;
}

void PrefixIndex::Insert(const BlockHash& hash, BlockId block) {
  assert(!IsCached(block));
  const auto [entry, inserted] = by_hash_.emplace(hash, block);
  assert(inserted);
  (void)inserted;
  entries_[block] = entry;
  publish_order_[block] = ++publish_clock_;
  Log(CacheEvent::Kind::kBlockStored, hash, block);
}

void PrefixIndex::Erase(BlockId block) {
  assert(IsCached(block));
  if (evictable_->Contains(block)) evictable_->Remove(block);
  Log(CacheEvent::Kind::kBlockRemoved, HashOf(block), block);
  by_hash_.erase(entries_[block]);
  publish_order_[block] = 0;
}

void PrefixIndex::Clear() {
  for (BlockId block : CachedBlocks()) {
    if (evictable_->Contains(block)) evictable_->Remove(block);
    publish_order_[block] = 0;
  }
  by_hash_.clear();
  Log(CacheEvent::Kind::kAllCleared, BlockHash{}, kNullBlock);
}

std::vector<BlockId> PrefixIndex::CachedBlocks() const {
  std::vector<BlockId> blocks;
  blocks.reserve(by_hash_.size());
  for (BlockId b = 0; b < BlockId(publish_order_.size()); ++b) {
    if (IsCached(b)) blocks.push_back(b);
  }
  return blocks;
}

void PrefixIndex::Log(CacheEvent::Kind kind, const BlockHash& hash, BlockId block) {
  if (int64_t(events_.size()) == CacheEvent::kMaxPendingEvents) {
    events_.pop_front();
    ++events_dropped_;
  }
  events_.push_back(CacheEvent{next_event_++, kind, hash, block});
}

std::vector<CacheEvent> PrefixIndex::DrainEvents() {
  std::vector<CacheEvent> drained(events_.begin(), events_.end());
  events_.clear();
  return drained;
}

}  // namespace ferrum_kv
