#include "ferrum_kv/prompt_logits.h"

#include <algorithm>
#include <cassert>
#include <set>
#include <utility>

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

PromptLogitsStore::PromptLogitsStore(int32_t capacity) : capacity_(capacity) {
  FKV_CHECK_ARG(capacity >= 1, "capacity must be >= 1, got " << capacity);
}

PromptLogits* PromptLogitsStore::Find(const PrefixKey& parent, const int32_t* tail,
                                      int64_t tail_len) {
  const auto [first, last] = by_parent_.equal_range(parent);
  for (auto it = first; it != last; ++it) {
    const std::vector<int32_t>& candidate = it->second->tail;
    if (int64_t(candidate.size()) == tail_len &&
        std::equal(candidate.begin(), candidate.end(), tail)) {
      entries_.splice(entries_.begin(), entries_, it->second);  // iterators stay valid
      return &entries_.front();
    }
  }
  return nullptr;
}

void PromptLogitsStore::Add(PromptLogits entry) {
  assert(Find(entry.parent, entry.tail.data(), int64_t(entry.tail.size())) == nullptr);
  entries_.push_front(std::move(entry));
  try {
    by_parent_.emplace(entries_.front().parent, entries_.begin());
  } catch (...) {  // bad_alloc: as if never inserted
    entries_.pop_front();
    throw;
  }
}

BlockId PromptLogitsStore::DropOverCapacity() {
  if (int64_t(entries_.size()) <= capacity_) return kNullBlock;
  const List::iterator oldest = std::prev(entries_.end());
  const BlockId dropped = oldest->tail_block;
  Erase(oldest);
  return dropped;
}

void PromptLogitsStore::Erase(List::iterator entry) {
  const auto [first, last] = by_parent_.equal_range(entry->parent);
  for (auto it = first; it != last; ++it) {
    if (it->second == entry) {
      by_parent_.erase(it);
      break;
    }
  }
  entries_.erase(entry);
}

std::vector<BlockId> PromptLogitsStore::Clear() {
  std::vector<BlockId> blocks = TailBlocks();
  entries_.clear();
  by_parent_.clear();
  return blocks;
}

std::vector<BlockId> PromptLogitsStore::TailBlocks() const {
  std::vector<BlockId> blocks(entries_.size());
  blocks.resize(size_t(TailBlocks(blocks.data())));
  return blocks;
}

int64_t PromptLogitsStore::TailBlocks(BlockId* out) const {
  int64_t k = 0;
  for (const PromptLogits& entry : entries_) {
    if (entry.tail_block != kNullBlock) out[k++] = entry.tail_block;
  }
  return k;
}

void PromptLogitsStore::CheckInvariants() const {
  FKV_CHECK_INVARIANT(size() <= capacity_, size() << " entries, capacity " << capacity_);
  FKV_CHECK_INVARIANT(by_parent_.size() == entries_.size(),
                      by_parent_.size() << " keys for " << entries_.size() << " entries");
  std::set<std::pair<std::pair<uint64_t, uint64_t>, std::vector<int32_t>>> seen;
  for (const auto& [parent, it] : by_parent_) {
    FKV_CHECK_INVARIANT(it->parent == parent, "an entry is filed under another parent key");
    FKV_CHECK_INVARIANT((it->tail_block != kNullBlock) == !it->tail.empty(),
                        "an entry with " << it->tail.size() << " tail tokens has tail block "
                                         << it->tail_block);
    FKV_CHECK_INVARIANT(seen.insert({{parent.lo, parent.hi}, it->tail}).second,
                        "two entries for one prompt");
  }
}

}  // namespace ferrum_kv
