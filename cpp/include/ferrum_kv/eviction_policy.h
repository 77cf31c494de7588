// EvictionPolicy: the set of evictable blocks of the prefix cache (cached, held by no sequence)
// and the order in which they are reclaimed when a fresh block is needed.
//
//   kLru          least recently released first. O(1): an intrusive list (IndexList).
//   kFifo         earliest published first, however often reused since. O(log n): a heap.
//   kPriorityLru  lowest retention priority first (the priority of the sequence that released
//                 the block, like TensorRT-LLM's retention config), least recently released first
//                 among equal priorities. O(log n): a heap.
//   kClock        CLOCK (second chance): the blocks in a ring in the order they became
//                 evictable; a block reused since its publication (a prefix hit took it, and it
//                 was released again) carries a reference bit. The hand evicts the first block
//                 without the bit, clearing the bits it passes (those blocks move behind it).
//                 O(1) amortized: an intrusive list and a bit per block.
//
// Invariants: Contains(b) for exactly size() blocks; PopVictim returns one of them.
// Errors: none; nothing allocates after construction (the cache manager relies on it: it changes
// the policy after the point where its calls may fail).
// Thread safety: thread-compatible (the cache manager's mutex guards it).
// Preconditions (Add of a contained block, Remove / PopVictim of a missing one) are asserted.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ferrum_kv/types.h"

namespace ferrum_kv {

enum class EvictionPolicyKind : uint8_t { kLru, kFifo, kPriorityLru, kClock };

// "lru" | "fifo" | "priority_lru" | "clock".
std::string EvictionPolicyName(EvictionPolicyKind kind);
// Parses EvictionPolicyName's output; throws InvalidArgument on anything else.
EvictionPolicyKind ParseEvictionPolicy(const std::string& name);

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;

  // block becomes evictable. priority: retention priority of the releasing sequence (higher is
  // kept longer); publish_order: when the block was published (smaller is older).
  // Precondition: !Contains(block) (asserted only: a release build would corrupt the order).
  virtual void Add(BlockId block, int32_t priority, uint64_t publish_order) = 0;
  // block stops being evictable (a prefix hit took it, or the cache dropped it).
  virtual void Remove(BlockId block) = 0;
  // Removes and returns the next block to evict. Precondition: size() > 0.
  virtual BlockId PopVictim() = 0;
  virtual bool Contains(BlockId block) const = 0;
  virtual int64_t size() const = 0;
};

// A policy over block ids [0, num_blocks).
std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionPolicyKind kind, int32_t num_blocks);

}  // namespace ferrum_kv
