// Sequence: what the cache manager knows about one sequence (its block table and token ids).
//
// Invariants (checked by PagedKvCache::CheckInvariants):
//   tokens.size() >= 1
//   blocks.size() == ceil(tokens.size() / block_size)
//   0 <= num_computed <= tokens.size()
//   blocks are device block ids when resident, host block ids when swapped out.
//   blocks_published <= num_computed / block_size
//   prefix caching: chain_key is the key of block blocks_published - 1 (prefix_key.h), root_key
//   when blocks_published == 0; with cache events chain_hash is likewise that block's SHA-256
//   chain hash (block_hash.h), root_hash when 0
// Thread safety: none of its own; the manager's mutex guards every Sequence.
#pragma once

#include <cstdint>
#include <vector>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/prefix_key.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

using SeqId = int64_t;

// (PagedKvCache::ForkFirst copies the fields one by one: a new field must be copied there too.)
struct Sequence {
  // Read by every decode step, first: they share the leading cache lines.
  std::vector<BlockId> blocks;   // logical block i -> physical block id
  std::vector<int32_t> tokens;   // token ids, in order
  int64_t num_computed = 0;      // leading tokens whose K/V is written (mark_computed)
  int64_t blocks_published = 0;  // prefix caching: blocks [0, this) were offered to the index
  uint64_t batch_stamp = 0;      // the manager's check for repeats within one batch call
  bool swapped = false;          // blocks live in the host tier
  // Prefix caching (unused without it): publication resumes the chains where they stopped.
  PrefixKey chain_key{};  // the key of block blocks_published - 1 (root_key if none)
  PrefixKey root_key{};   // the namespace's chain root (prefix_key.h)
  int32_t priority = 0;   // retention priority of the blocks it releases
  BlockHash root_hash{};  // with cache events: the public SHA-256 chain (block_hash.h), which
  BlockHash chain_hash{}; //   names blocks in the events, likewise
};

// Number of blocks that num_tokens (>= 0) tokens occupy; exact up to INT64_MAX (no overflow).
inline int64_t BlocksForTokens(int64_t num_tokens, int32_t block_size) {
  return num_tokens / block_size + (num_tokens % block_size != 0 ? 1 : 0);
}

}  // namespace ferrum_kv
