#!/usr/bin/env bash
# The long runs behind docs/reliability.md: the random operation driver (10^6 operations by
# default), the fault-injection sweep, and the threaded soak, in an existing ctest build directory
# (tests/run_all.sh makes build/cpp-release, build/cpp-asan and build/cpp-tsan).
# Usage: tests/fuzz_long.sh [build-dir]   (default build/cpp-release)
# Environment: FKV_FUZZ_OPS (default 1000000), FKV_FUZZ_SEED (default 1), FKV_FAULT_OPS (default
# 100000), FKV_STRESS_OPS per thread (default 20000), FKV_STRESS_THREADS (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build/cpp-release}"
export FKV_FUZZ_OPS="${FKV_FUZZ_OPS:-1000000}"
export FKV_FUZZ_SEED="${FKV_FUZZ_SEED:-1}"
export FKV_FAULT_OPS="${FKV_FAULT_OPS:-100000}"
export FKV_STRESS_OPS="${FKV_STRESS_OPS:-20000}"
export FKV_STRESS_THREADS="${FKV_STRESS_THREADS:-8}"
run() { printf '\n==== %s ====\n' "$*"; time "$@"; }
run "$BUILD/ferrum_kv_tests" --gtest_filter='CacheFuzzTest.RandomOperationsMatchTheModel'
run "$BUILD/ferrum_kv_fault_tests" --gtest_filter='FaultInjectionTest.EveryFaultPoint*'
run "$BUILD/ferrum_kv_tests" --gtest_filter='EveryPolicy/CacheConcurrentTest.*'
