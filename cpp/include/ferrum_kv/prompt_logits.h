// PromptLogitsStore: the last-token logits of whole prompts, so that a prompt seen before can skip
// prefill entirely (PagedKvCache::AddSequenceWithLogits; CacheConfig::max_prompt_logits).
//
// An entry names a prompt by the prefix key of its full blocks (prefix_key.h: the key of its last
// full block, or the namespace's root key if it has none) and the exact token ids after them
// (its partial last block: 0 to block_size - 1 tokens). It holds the logits the model produced
// after the prompt's last token and, when the prompt ends inside a block, tail_block: a device
// block holding a copy of that partial block's K/V (the cache manager holds one pool reference on
// the entry's behalf; the full blocks stay in the prefix index, which the store does not pin).
//
// Capacity: at most capacity() entries; Insert drops the least recently used one (Find and Insert
// count as uses) and hands back its tail block. DropOldestWithTail gives one block back on demand
// (the manager, when it runs out of blocks).
// Invariants (CheckInvariants): size() <= capacity(); the lookup map and the recency list name the
// same entries; tail_block != kNullBlock exactly when the tail is not empty; no two entries have
// the same parent and tail.
// Thread safety: thread-compatible (the cache manager's mutex guards it).
// Complexity: Find and Insert O(tail length) expected, plus the copy of the logits on Insert.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "ferrum_kv/prefix_key.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

struct PromptLogits {
  PrefixKey parent;            // key of the prompt's last full block (root key if none)
  bool has_full_blocks = false;  // parent is a block's key (not a namespace root)
  std::vector<int32_t> tail;   // the token ids after the full blocks
  BlockId tail_block = kNullBlock;  // copy of the partial last block's K/V; kNullBlock if no tail
  std::vector<float> logits;   // after the prompt's last token
};

class PromptLogitsStore {
 public:
  // capacity >= 1.
  explicit PromptLogitsStore(int32_t capacity);

  // The entry for (parent, tail[0, tail_len)), now the most recently used; nullptr if none.
  PromptLogits* Find(const PrefixKey& parent, const int32_t* tail, int64_t tail_len);
  // Adds entry (precondition: Find(entry.parent, entry.tail) is nullptr) as the most recently
  // used. If that makes more than capacity() entries, drops the least recently used one and
  // returns its tail block (kNullBlock if it had none); else returns kNullBlock.
  BlockId Insert(PromptLogits entry) {
    Add(std::move(entry));
    return DropOverCapacity();
  }
  // Insert in two steps, for a caller that reclaims blocks in between as if the entry were not
  // there yet: Add may leave capacity() + 1 entries (strong guarantee: a bad_alloc adds nothing);
  // DropOverCapacity then drops the least recently used one if there are more than capacity()
  // and returns its tail block (kNullBlock if none was dropped or it had none).
  void Add(PromptLogits entry);
  BlockId DropOverCapacity();
  // Drops the least recently used entry with a tail block for which reclaimable(entry) holds
  // (entries without one hold no block) and returns that block; kNullBlock if there is none.
  template <typename Predicate>
  BlockId DropOldestWithTail(Predicate reclaimable) {
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (it->tail_block == kNullBlock || !reclaimable(*it)) continue;
      const BlockId block = it->tail_block;
      Erase(std::prev(it.base()));
      return block;
    }
    return kNullBlock;
  }
  // The most recently used entry (the one Insert just added). Precondition: size() > 0.
  PromptLogits& MostRecent() { return entries_.front(); }
  // Drops every entry and returns their tail blocks.
  std::vector<BlockId> Clear();
  // The tail blocks of all entries (for the manager's reference-count invariant).
  std::vector<BlockId> TailBlocks() const;
  // The same into out[0..k), k <= size(), without allocating; returns k.
  int64_t TailBlocks(BlockId* out) const;

  int64_t size() const { return int64_t(entries_.size()); }
  int32_t capacity() const { return capacity_; }

  // Throws InvariantError unless the invariants above hold.
  void CheckInvariants() const;

 private:
  using List = std::list<PromptLogits>;  // most recently used first
  struct KeyHash {
    size_t operator()(const PrefixKey& key) const { return size_t(key.lo ^ key.hi); }
  };

  // Removes the entry from the list and the map.
  void Erase(List::iterator entry);

  const int32_t capacity_;
  List entries_;
  std::unordered_multimap<PrefixKey, List::iterator, KeyHash> by_parent_;
};

}  // namespace ferrum_kv
