// StateDigest: one number for everything a caller can observe of a PagedKvCache through its
// public API, to check that a call which threw left the cache exactly as it was.
//
// It covers, for each of the given seq_ids, whether the cache holds it and then its swapped state,
// tokens, block table and K/V of every layer (GatherKv); and Stats() (every field but
// allocation_failures, which counts the failed calls themselves) and MemoryPressure(). Free
// blocks' bytes are not observable and not covered; neither are events (draining them would
// change the cache).
#pragma once

#include <cstdint>
#include <vector>

#include "ferrum_kv/cache_manager.h"

namespace ferrum_kv::fuzz {

uint64_t StateDigest(const PagedKvCache& cache, const std::vector<SeqId>& seq_ids);

}  // namespace ferrum_kv::fuzz
