#include "ferrum_kv/prefix_index.h"

#include <new>

#include <algorithm>
#include <cassert>

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {
namespace {

// Loads value into a register: a demand load that the compiler keeps though nothing uses it.
template <typename T>
void Touch(const T& value) {
  asm volatile("" : : "r"(value));
}

size_t SlotCount(int32_t num_blocks) {
  size_t slots = 2;
  while (slots < 2 * size_t(num_blocks)) slots *= 2;
  return slots;
}

}  // namespace

PrefixIndex::PrefixIndex(int32_t num_blocks, EvictionPolicyKind policy, bool log_events)
    : log_events_(log_events),
      slots_(SlotCount(num_blocks)),
      slot_mask_(slots_.size() - 1),
      key_of_(static_cast<size_t>(num_blocks)),
      content_hash_(log_events ? static_cast<size_t>(num_blocks) : 0),
      publish_order_(static_cast<size_t>(num_blocks), 0),
      evictable_(MakeEvictionPolicy(policy, num_blocks)) {}

BlockId PrefixIndex::Find(const PrefixKey& key) const {
  for (size_t i = Home(Tag(key));; i = (i + 1) & slot_mask_) {
    const Slot& slot = slots_[i];
    if (slot.block == kNullBlock) return kNullBlock;
    if (slot.tag == Tag(key) && key_of_[slot.block] == key) return slot.block;
  }
}

bool PrefixIndex::InsertIfAbsent(const PrefixKey& key, BlockId block,
                                 const BlockHash* content_hash) {
  assert(!IsCached(block));
  assert(content_hash != nullptr || !log_events_);
  size_t i = Home(Tag(key));
  for (; slots_[i].block != kNullBlock; i = (i + 1) & slot_mask_) {
    if (slots_[i].tag == Tag(key) && key_of_[slots_[i].block] == key) return false;
  }
  slots_[i] = Slot{Tag(key), block};
  ++size_;
  key_of_[block] = key;
  publish_order_[block] = ++publish_clock_;
  if (log_events_) {
    content_hash_[block] = *content_hash;
    Log(CacheEvent::Kind::kBlockStored, *content_hash, block);
  }
  return true;
}

void PrefixIndex::InsertBatch(const PrefixKey* keys, const BlockId* blocks,
                              const BlockHash* content_hashes, int64_t n,
                              std::vector<BlockId>* inserted) {
  // Demand loads: software prefetches alone (PrefetchInsertion microseconds ahead) left the
  // decode step's inserts about as slow as none; demand loads alone halved the wait for the
  // lines, and both together leave a third of it.
  constexpr int64_t kChunk = 32;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = std::min(n, start + kChunk);
    for (int64_t i = start; i < end; ++i) {
      Touch(slots_[Home(Tag(keys[i]))].block);
      Touch(publish_order_[blocks[i]]);
    }
    for (int64_t i = start; i < end; ++i) {
      if (!IsCached(blocks[i]) &&
          InsertIfAbsent(keys[i], blocks[i], content_hashes ? &content_hashes[i] : nullptr)) {
        inserted->push_back(blocks[i]);
      }
    }
  }
}

void PrefixIndex::Erase(BlockId block) {
  assert(IsCached(block));
  if (evictable_->Contains(block)) evictable_->Remove(block);
  if (log_events_) Log(CacheEvent::Kind::kBlockRemoved, content_hash_[block], block);
  size_t hole = Home(Tag(key_of_[block]));
  while (slots_[hole].block != block) hole = (hole + 1) & slot_mask_;
  // Backward-shift deletion: move later entries of the run into the hole when the hole lies on
  // their probe path (between their home slot and where they sit).
  for (size_t i = (hole + 1) & slot_mask_; slots_[i].block != kNullBlock;
       i = (i + 1) & slot_mask_) {
    const size_t home = Home(slots_[i].tag);
    if (((i - home) & slot_mask_) >= ((i - hole) & slot_mask_)) {
      slots_[hole] = slots_[i];
      hole = i;
    }
  }
  slots_[hole] = Slot{};
  --size_;
  publish_order_[block] = 0;
}

void PrefixIndex::Clear() {
  for (BlockId block = 0; block < BlockId(publish_order_.size()); ++block) {  // no allocation
    if (!IsCached(block)) continue;
    if (evictable_->Contains(block)) evictable_->Remove(block);
    publish_order_[block] = 0;
  }
  std::fill(slots_.begin(), slots_.end(), Slot{});
  size_ = 0;
  if (log_events_) Log(CacheEvent::Kind::kAllCleared, BlockHash{}, kNullBlock);
}

std::vector<BlockId> PrefixIndex::CachedBlocks() const {
  std::vector<BlockId> blocks;
  blocks.reserve(size_t(size_));
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
  try {
    events_.push_back(CacheEvent{next_event_++, kind, hash, block});
  } catch (const std::bad_alloc&) {  // dropped and counted like an overflow (a gap in seq_no):
    ++events_dropped_;               // the cache's calls never fail after they changed the index
  }
}

std::vector<CacheEvent> PrefixIndex::DrainEvents() {
  std::vector<CacheEvent> drained(events_.begin(), events_.end());
  events_.clear();
  return drained;
}

void PrefixIndex::CheckInvariants() const {
  int64_t occupied = 0;
  for (const Slot& slot : slots_) {
    if (slot.block == kNullBlock) continue;
    ++occupied;
    FKV_CHECK_INVARIANT(IsCached(slot.block) && Tag(key_of_[slot.block]) == slot.tag,
                        "slot of block " << slot.block << " names a block not cached there");
  }
  int64_t cached = 0;
  for (BlockId b = 0; b < BlockId(publish_order_.size()); ++b) {
    if (!IsCached(b)) {
      FKV_CHECK_INVARIANT(!evictable_->Contains(b), "block " << b << " evictable, not cached");
      continue;
    }
    ++cached;
    FKV_CHECK_INVARIANT(Find(key_of_[b]) == b, "cached block " << b << " not found by its key");
  }
  FKV_CHECK_INVARIANT(occupied == size_ && cached == size_,
                      "index size " << size_ << ", " << occupied << " slots, " << cached
                                    << " cached blocks");
}

}  // namespace ferrum_kv
