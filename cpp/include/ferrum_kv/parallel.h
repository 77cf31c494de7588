// The library's own worker threads: what the attention kernels and the memory probe run on.
//
// Why not OpenMP: its runtime is not fork-safe (a child made by fork() after the parent ran a
// parallel region hangs in the next one), it exits the process when it cannot start a thread,
// and it cannot be bounded per call. Here:
//   - each calling thread has its own team of helper threads, started on first use and grown on
//     demand (calls from several threads run side by side, as with OpenMP);
//   - after fork() the child forgets the teams it inherited (their threads do not exist there)
//     and starts new ones;
//   - a helper that cannot be started (std::system_error, or an injected failure in tests) is
//     simply not used: the work runs on the threads that exist, at least the calling one;
//   - helpers spin for a few microseconds after a call before they sleep, so back-to-back calls
//     (one per layer) do not pay a wake-up each.
//
// Thread safety: every function may be called from any thread. A call from inside a parallel
// body runs serially on the calling thread (no nested teams).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace ferrum_kv {

// The largest thread count a call accepts.
inline constexpr int32_t kMaxThreads = 1024;

// The thread count used when a call asks for 0: unless SetDefaultNumThreads was called, the
// number of CPUs this process may run on (its affinity mask, read when the library is loaded and
// again in a child made by fork()), at most kMaxThreads.
int32_t DefaultNumThreads();

// Sets DefaultNumThreads() for the whole process; InvalidArgument unless 1 <= n <= kMaxThreads.
void SetDefaultNumThreads(int32_t n);

// num_threads as the caller asked: 0 -> DefaultNumThreads(); InvalidArgument outside
// [0, kMaxThreads].
int32_t ResolveNumThreads(int32_t num_threads);

// Runs body(thread) on up to num_threads threads (num_threads >= 1), the calling thread being
// thread 0, and returns once every thread has returned; the thread indices used are
// 0 .. (the returned count - 1). The first exception a body throws is rethrown here (after all
// threads are done).
int32_t RunOnThreads(int32_t num_threads, const std::function<void(int32_t thread)>& body);

// fn(thread, item) for item in [0, num_items), each item exactly once, items handed out one at a
// time in increasing order to whichever thread is free (OpenMP's schedule(dynamic, 1)), on at
// most min(num_threads, num_items) threads.
template <class Fn>
void ParallelFor(int64_t num_items, int32_t num_threads, Fn&& fn) {
  if (num_items <= 0) return;
  if (num_threads <= 1 || num_items == 1) {
    for (int64_t item = 0; item < num_items; ++item) fn(0, item);
    return;
  }
  std::atomic<int64_t> next{0};
  const int32_t threads = num_items < num_threads ? static_cast<int32_t>(num_items) : num_threads;
  RunOnThreads(threads, [&](int32_t thread) {
    for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < num_items;
         item = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(thread, item);
    }
  });
}

namespace testing {
// Test hook: while set, starting a helper thread fails as if the system refused it.
void SetThreadStartFails(bool fails);
}  // namespace testing

}  // namespace ferrum_kv
