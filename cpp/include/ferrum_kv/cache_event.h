// CacheEvent: what an external router needs to know about the prefix cache of one worker.
//
//   kBlockStored   a block's content (hash) became findable
//   kBlockRemoved  that hash is no longer findable (the block was evicted)
//   kAllCleared    every hash was dropped (reset_prefix_cache)
//
// seq_no increases by one per event over the cache's life, so a consumer detects gaps (events
// dropped because nobody drained them: the log keeps the newest kMaxPendingEvents).
#pragma once

#include <cstdint>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

struct CacheEvent {
  enum class Kind : uint8_t { kBlockStored, kBlockRemoved, kAllCleared };
  static constexpr int64_t kMaxPendingEvents = int64_t{1} << 20;

  uint64_t seq_no = 0;
  Kind kind = Kind::kBlockStored;
  BlockHash hash{};            // zero for kAllCleared
  BlockId block = kNullBlock;  // kNullBlock for kAllCleared
};

}  // namespace ferrum_kv
