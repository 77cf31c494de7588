#include "ferrum_kv/memory_probe.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

uint64_t SumWords(const void* data, int64_t bytes, int32_t num_threads) {
  FKV_CHECK_ARG(bytes >= 0 && bytes % 8 == 0,
                "bytes must be a non-negative multiple of 8, got " << bytes);
  FKV_CHECK_ARG(num_threads >= 0, "num_threads must be >= 0, got " << num_threads);
#ifdef _OPENMP
  if (num_threads == 0) num_threads = omp_get_max_threads();
#endif
  const auto* words = static_cast<const uint64_t*>(data);
  const int64_t n = bytes / 8;
  uint64_t total = 0;
  // Integer addition is associative, so the compiler vectorises this loop; a static schedule
  // gives each thread one contiguous stream.
#pragma omp parallel for num_threads(num_threads) schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += words[i];
  return total;
}

}  // namespace ferrum_kv
