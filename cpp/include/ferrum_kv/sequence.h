// Sequence: what the cache manager knows about one sequence (its block table and token ids).
//
// Invariants (checked by PagedKvCache::CheckInvariants):
//   tokens.size() >= 1
//   blocks.size() == ceil(tokens.size() / block_size)
//   0 <= num_computed <= tokens.size()
//   blocks are device block ids when resident, host block ids when swapped out.
//   block_hashes.size() <= tokens.size() / block_size; blocks_published <= block_hashes.size()
// Thread safety: none of its own; the manager's mutex guards every Sequence.
#pragma once

#include <cstdint>
#include <vector>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

using SeqId = int64_t;

struct Sequence {
  std::vector<BlockId> blocks;  // logical block i -> physical block id
  std::vector<int32_t> tokens;  // token ids, in order
  int64_t num_computed = 0;     // leading tokens whose K/V is written (mark_computed)
  bool swapped = false;         // blocks live in the host tier
  uint64_t batch_stamp = 0;     // the manager's duplicate check within one AppendBatch

  // Prefix caching (unused without it):
  BlockHash root_hash{};                // SHA-256(b"ferrum-kv/v1" + namespace)
  std::vector<BlockHash> block_hashes;  // chain hashes of the first full blocks
  int64_t blocks_published = 0;         // blocks [0, this) were offered to the prefix index
  int32_t priority = 0;                 // retention priority of the blocks it releases
};

// Number of blocks that num_tokens tokens occupy.
inline int64_t BlocksForTokens(int64_t num_tokens, int32_t block_size) {
  return (num_tokens + block_size - 1) / block_size;
}

}  // namespace ferrum_kv
