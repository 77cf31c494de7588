// A read-bandwidth probe for benchmarks: the ceiling that attention kernels' effective bandwidth
// is reported against. It streams a buffer once, the way a memory-bound kernel reads K/V.
// Thread safety: reentrant (reads only). Complexity: O(bytes), split evenly over the threads.
#pragma once

#include <cstdint>

namespace ferrum_kv {

// Reads every 8-byte word of data[0, bytes) (bytes a multiple of 8) on num_threads threads
// (parallel.h; 0 = DefaultNumThreads()) and returns their wrapping sum, so that no read can be
// optimised away. Throws InvalidArgument for a negative size, a size not a multiple of 8 or
// num_threads outside [0, kMaxThreads].
uint64_t SumWords(const void* data, int64_t bytes, int32_t num_threads);

}  // namespace ferrum_kv
