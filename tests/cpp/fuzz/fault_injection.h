// Fault injection for the tests: a thread arms itself (Arm(n)), and the n-th fault point it passes
// from then on throws std::bad_alloc, once, and disarms. The fault points are the heap
// allocations of the fault-injection test program, whose global operator new calls Point()
// (tests/cpp/fault_injection/failing_allocator.cc); in other programs nothing calls Point(), and
// the library itself has no hook at all (the shipped wheel pays nothing). Sweeping n = 1, 2, ...
// over one call until it passes all its points without a failure (Armed() still true) fails
// every allocation the call makes, one at a time.
//
// Thread safety: the state is per thread (thread_local); a thread's faults never fire in another.
#pragma once

#include <cstdint>

namespace ferrum_kv::fuzz::fault_injection {

// From now on, the n-th fault point this thread passes throws std::bad_alloc (n >= 1); n == 0
// disarms. Resets Hits().
void Arm(int64_t n);
// Fault points this thread passed while armed since the last Arm (including the one that threw).
int64_t Hits();
// Whether this thread is armed (the fault has not fired yet).
bool Armed();
// A fault point: counts while armed and throws std::bad_alloc at the armed count.
void Point();

}  // namespace ferrum_kv::fuzz::fault_injection
