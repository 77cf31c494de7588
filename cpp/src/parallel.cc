#include "ferrum_kv/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {
namespace {

// How long a helper (and a caller waiting for its helpers) spins before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(50);

std::atomic<int32_t> g_default_threads{0};  // 0: follow g_cpu_count (no SetDefaultNumThreads)
std::atomic<bool> g_thread_start_fails{false};
thread_local bool t_inside_team = false;  // a helper, or a caller inside RunOnThreads

void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until done() or kSpin has passed (not at all unless spin); returns done().
template <class Done>
bool SpinUntil(bool spin, Done&& done) {
  if (!spin) return done();
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    CpuRelax();
    if (i % 64 == 63 && std::chrono::steady_clock::now() >= deadline) return done();
  }
}

int32_t ReadAffinityCpuCount() {
  cpu_set_t set;
  int32_t count = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) count = CPU_COUNT(&set);
  if (count <= 0) count = static_cast<int32_t>(std::thread::hardware_concurrency());
  return std::clamp<int32_t>(count, 1, kMaxThreads);
}

// The CPUs this process may run on, in [1, kMaxThreads]: read when the library is loaded and
// again in a child made by fork() (which may be pinned to fewer).
std::atomic<int32_t> g_cpu_count{ReadAffinityCpuCount()};

int32_t AffinityCpuCount() { return g_cpu_count.load(std::memory_order_relaxed); }

// One calling thread's helpers. Invariants: helpers_[i] runs Loop(i + 1); a job is published by
// bumping generation_ (under mu_) with body_, active_ (helpers 1..active_ take part) and
// pending_ = active_, and wakes only those helpers; the caller publishes the next job only after
// pending_ reached 0. A helper a job does not need neither wakes nor spins for it.
class Team {
  struct Helper {
    std::condition_variable wake;  // a job for this helper, or stop_
    std::thread thread;
  };

 public:
  Team() = default;
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    for (auto& helper : helpers_) helper->wake.notify_one();
    for (auto& helper : helpers_) helper->thread.join();
  }

  int32_t Run(int32_t num_threads, const std::function<void(int32_t)>& body) {
    Grow(num_threads - 1);
    const int32_t helpers = std::min(num_threads - 1, static_cast<int32_t>(helpers_.size()));
    if (helpers == 0) {
      body(0);
      return 1;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      body_ = &body;
      active_.store(helpers, std::memory_order_relaxed);
      // More threads than CPUs: a spinning thread would hold a CPU that another one needs.
      spin_.store(helpers + 1 <= AffinityCpuCount(), std::memory_order_relaxed);
      error_ = nullptr;
      pending_.store(helpers, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    for (int32_t i = 0; i < helpers; ++i) helpers_[size_t(i)]->wake.notify_one();
    std::exception_ptr own_error;
    try {
      body(0);
    } catch (...) {
      own_error = std::current_exception();
    }
    if (!SpinUntil(spin_.load(std::memory_order_relaxed),
                   [&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mu_);
      done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    if (own_error) std::rethrow_exception(own_error);
    if (error_) std::rethrow_exception(error_);
    return helpers + 1;
  }

 private:
  // Starts helpers until there are `wanted`, or one cannot be started.
  void Grow(int32_t wanted) {
    while (static_cast<int32_t>(helpers_.size()) < wanted) {
      if (g_thread_start_fails.load(std::memory_order_relaxed)) return;
      const int32_t index = static_cast<int32_t>(helpers_.size()) + 1;
      const uint64_t seen = generation_.load(std::memory_order_relaxed);
      auto helper = std::make_unique<Helper>();
      Helper* const raw = helper.get();
      try {
        helper->thread = std::thread([this, raw, index, seen] { Loop(*raw, index, seen); });
      } catch (const std::system_error&) {
        return;
      }
      helpers_.push_back(std::move(helper));
    }
  }

  void Loop(Helper& self, int32_t index, uint64_t seen) {
    t_inside_team = true;
    // A job for this helper: published after the last one it ran, and needing it.
    const auto job_for_me = [&] {
      return generation_.load(std::memory_order_acquire) != seen &&
             index <= active_.load(std::memory_order_relaxed);
    };
    for (;;) {
      SpinUntil(spin_.load(std::memory_order_relaxed), job_for_me);
      std::unique_lock<std::mutex> lock(mu_);
      self.wake.wait(lock, [&] { return stop_ || job_for_me(); });
      if (stop_) return;
      seen = generation_.load(std::memory_order_relaxed);
      const std::function<void(int32_t)>* body = body_;
      lock.unlock();
      try {
        (*body)(index);
      } catch (...) {
        std::lock_guard<std::mutex> error_lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> done_lock(mu_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::unique_ptr<Helper>> helpers_;  // touched only by the owning (calling) thread
  std::mutex mu_;
  std::condition_variable done_;  // the caller: pending_ reached 0
  std::atomic<uint64_t> generation_{0};
  std::atomic<int32_t> pending_{0};
  std::atomic<bool> spin_{true};  // whether the last job's threads fit on the CPUs
  const std::function<void(int32_t)>* body_ = nullptr;  // guarded by mu_
  std::atomic<int32_t> active_{0};                        // written under mu_
  std::exception_ptr error_;                              // guarded by mu_
  bool stop_ = false;                                     // guarded by mu_
};

thread_local std::unique_ptr<Team> t_team;

// In a child made by fork(), the forking thread's team refers to helpers that do not exist
// there: it is dropped without being destroyed (joining them would hang), and a new one starts
// on first use. Other threads' teams belong to threads that do not exist in the child either.
// The child may also run on fewer CPUs.
void ForgetTeamAfterFork() {
  (void)t_team.release();
  g_cpu_count.store(ReadAffinityCpuCount(), std::memory_order_relaxed);
}

// Registered when the library is loaded (not lazily: a fork during a lazy initialisation on
// another thread would leave the child waiting for it forever).
[[maybe_unused]] const bool g_fork_handler_registered =
    pthread_atfork(nullptr, nullptr, &ForgetTeamAfterFork) == 0;

Team& CurrentTeam() {
  if (!t_team) t_team = std::make_unique<Team>();
  return *t_team;
}

}  // namespace

int32_t DefaultNumThreads() {
  const int32_t threads = g_default_threads.load(std::memory_order_relaxed);
  return threads != 0 ? threads : AffinityCpuCount();
}

void SetDefaultNumThreads(int32_t n) {
  FKV_CHECK_ARG(n >= 1 && n <= kMaxThreads,
                "the default thread count must be in [1, " << kMaxThreads << "], got " << n);
  g_default_threads.store(n, std::memory_order_relaxed);
}

int32_t ResolveNumThreads(int32_t num_threads) {
  FKV_CHECK_ARG(num_threads >= 0 && num_threads <= kMaxThreads,
                "num_threads must be in [0, " << kMaxThreads << "] (0: the default, "
                                              << DefaultNumThreads() << "), got " << num_threads);
  return num_threads == 0 ? DefaultNumThreads() : num_threads;
}

int32_t RunOnThreads(int32_t num_threads, const std::function<void(int32_t)>& body) {
  FKV_CHECK_ARG(num_threads >= 1 && num_threads <= kMaxThreads,
                "num_threads must be in [1, " << kMaxThreads << "], got " << num_threads);
  if (num_threads == 1 || t_inside_team) {
    body(0);
    return 1;
  }
  t_inside_team = true;
  struct Leave {
    ~Leave() { t_inside_team = false; }
  } leave;
  return CurrentTeam().Run(num_threads, body);
}

namespace testing {
void SetThreadStartFails(bool fails) {
  g_thread_start_fails.store(fails, std::memory_order_relaxed);
}
}  // namespace testing

}  // namespace ferrum_kv
