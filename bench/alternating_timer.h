// Side-by-side timing for the C++ benchmarks: two calls timed once each per benchmark
// iteration, in alternating order, so that drift on a shared machine hits both alike; the
// medians of the two series are what a benchmark reports (and their ratio).
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

namespace ferrum_kv::bench {

inline double Median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

// Runs a() and b() once each per iteration of state (a first, then b first, alternately) and
// returns the median nanoseconds per call of each: {a, b}.
template <typename A, typename B>
std::pair<double, double> AlternatingMedians(benchmark::State& state, A&& a, B&& b) {
  std::vector<double> a_ns, b_ns;
  bool a_first = true;
  for (auto _ : state) {
    for (int round = 0; round < 2; ++round) {
      const bool run_a = (round == 0) == a_first;
      const auto start = std::chrono::steady_clock::now();
      if (run_a) {
        a();
      } else {
        b();
      }
      const double ns =
          std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
              .count();
      (run_a ? a_ns : b_ns).push_back(ns);
    }
    a_first = !a_first;
    benchmark::ClobberMemory();
  }
  return {Median(std::move(a_ns)), Median(std::move(b_ns))};
}

}  // namespace ferrum_kv::bench
