#include "ferrum_kv/parallel.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "ferrum_kv/errors.h"

namespace ferrum_kv {
namespace {

// Runs ParallelFor over num_items and returns how often each item ran.
std::vector<int> Counts(int64_t num_items, int32_t threads) {
  std::vector<std::atomic<int>> counts(static_cast<size_t>(num_items));
  ParallelFor(num_items, threads, [&](int32_t thread, int64_t item) {
    EXPECT_GE(thread, 0);
    EXPECT_LT(thread, threads);
    counts[static_cast<size_t>(item)].fetch_add(1);
  });
  std::vector<int> result;
  for (auto& count : counts) result.push_back(count.load());
  return result;
}

TEST(ParallelTest, EveryItemRunsExactlyOnce) {
  for (int32_t threads : {1, 2, 3, 8}) {
    for (int64_t items : {0, 1, 2, 7, 1000}) {
      EXPECT_EQ(Counts(items, threads), std::vector<int>(size_t(items), 1))
          << threads << " threads, " << items << " items";
    }
  }
}

TEST(ParallelTest, RunOnThreadsUsesEachIndexOnce) {
  std::vector<std::atomic<int>> seen(4);
  const int32_t used = RunOnThreads(4, [&](int32_t thread) { seen[size_t(thread)] += 1; });
  EXPECT_GE(used, 1);
  EXPECT_LE(used, 4);
  for (int32_t i = 0; i < 4; ++i) EXPECT_EQ(seen[size_t(i)].load(), i < used ? 1 : 0);
}

TEST(ParallelTest, ExceptionsReachTheCallerAfterEveryThreadIsDone) {
  std::atomic<int> finished{0};
  EXPECT_THROW(RunOnThreads(3,
                            [&](int32_t thread) {
                              if (thread == 1) throw std::runtime_error("helper failed");
                              finished += 1;
                            }),
               std::runtime_error);
  EXPECT_THROW(RunOnThreads(3, [](int32_t) { throw std::logic_error("all failed"); }),
               std::logic_error);
  EXPECT_EQ(Counts(50, 3), std::vector<int>(50, 1));  // the team still works
}

TEST(ParallelTest, ThreadCountsAreBounded) {
  EXPECT_THROW(ResolveNumThreads(-1), InvalidArgument);
  EXPECT_THROW(ResolveNumThreads(kMaxThreads + 1), InvalidArgument);
  EXPECT_THROW(RunOnThreads(0, [](int32_t) {}), InvalidArgument);
  EXPECT_EQ(ResolveNumThreads(0), DefaultNumThreads());
  EXPECT_EQ(ResolveNumThreads(5), 5);
  EXPECT_THROW(SetDefaultNumThreads(0), InvalidArgument);
  const int32_t previous = DefaultNumThreads();
  SetDefaultNumThreads(3);
  EXPECT_EQ(ResolveNumThreads(0), 3);
  SetDefaultNumThreads(previous);
}

TEST(ParallelTest, HelpersThatCannotStartAreNotUsed) {
  // A fresh calling thread has no helpers yet; with thread creation failing it runs alone.
  std::thread caller([] {
    testing::SetThreadStartFails(true);
    std::atomic<int> calls{0};
    EXPECT_EQ(RunOnThreads(4, [&](int32_t thread) {
                EXPECT_EQ(thread, 0);
                calls += 1;
              }),
              1);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(Counts(100, 4), std::vector<int>(100, 1));
    testing::SetThreadStartFails(false);
    EXPECT_EQ(Counts(100, 4), std::vector<int>(100, 1));
  });
  caller.join();
}

TEST(ParallelTest, NestedCallsRunOnTheCallingThread) {
  std::atomic<int> inner_threads{0};
  ParallelFor(4, 2, [&](int32_t, int64_t) {
    inner_threads += RunOnThreads(4, [](int32_t thread) { EXPECT_EQ(thread, 0); });
  });
  EXPECT_EQ(inner_threads.load(), 4);
}

TEST(ParallelTest, ForkedChildStartsItsOwnHelpers) {
  EXPECT_EQ(Counts(64, 2), std::vector<int>(64, 1));  // the parent's helpers exist
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<std::atomic<int>> counts(64);
    const int32_t used = RunOnThreads(2, [&](int32_t) {});
    ParallelFor(64, 2, [&](int32_t, int64_t item) { counts[size_t(item)] += 1; });
    bool ok = used == 2;
    for (auto& count : counts) ok = ok && count.load() == 1;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  for (int waited = 0; waited < 600; ++waited) {  // up to 60 s: a hang fails, not blocks
    if (waitpid(pid, &status, WNOHANG) == pid) break;
    usleep(100000);
    if (waited == 599) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL() << "the forked child hung";
    }
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(ParallelConcurrentTest, CallersOnSeveralThreadsRunSideBySide) {
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&total] {
      for (int round = 0; round < 200; ++round) {
        std::atomic<int64_t> sum{0};
        ParallelFor(37, 3, [&](int32_t, int64_t item) { sum += item; });
        EXPECT_EQ(sum.load(), 37 * 36 / 2);
        total += sum.load();
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(total.load(), int64_t{4} * 200 * (37 * 36 / 2));
}

}  // namespace
}  // namespace ferrum_kv
