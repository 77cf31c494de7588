#include "ferrum_kv/memory_probe.h"

#include <algorithm>
#include <vector>

#include "ferrum_kv/parallel.h"
#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

uint64_t SumWords(const void* data, int64_t bytes, int32_t num_threads) {
  FKV_CHECK_ARG(bytes >= 0 && bytes % 8 == 0,
                "bytes must be a non-negative multiple of 8, got " << bytes);
  const int32_t threads = ResolveNumThreads(num_threads);
  const auto* words = static_cast<const uint64_t*>(data);
  const int64_t n = bytes / 8;
  // One contiguous stream per thread; integer addition is associative, so the compiler
  // vectorises each chunk's loop.
  std::vector<uint64_t> partial(size_t(threads), 0);
  ParallelFor(threads, threads, [&](int32_t, int64_t chunk) {
    const int64_t base = n / threads, extra = n % threads;  // the first `extra` get one more
    const int64_t begin = chunk * base + std::min(chunk, extra);
    const int64_t end = begin + base + (chunk < extra ? 1 : 0);
    uint64_t total = 0;
    for (int64_t i = begin; i < end; ++i) total += words[i];
    partial[size_t(chunk)] = total;
  });
  uint64_t total = 0;
  for (uint64_t value : partial) total += value;
  return total;
}

}  // namespace ferrum_kv
