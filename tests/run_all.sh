#!/usr/bin/env bash
# The whole test suite, from a clean clone: C++ unit tests (ctest: a Release build, an
# AddressSanitizer + UndefinedBehaviorSanitizer build, a ThreadSanitizer build of the concurrency
# tests, and the Python threaded stress test against that build's extension: tests/tsan_python.sh)
# and the Python tests (pytest against the package installed with `pip install .[test,torch,hf]`;
# FKV_REQUIRE_TORCH=1 makes the torch and transformers tests fail, not skip, if either is missing).
# It installs what it needs: libgtest-dev and redis-server (the tier tests start their own
# servers) through apt-get, and a virtualenv in build/test-venv.
# Environment: FKV_JOBS (build parallelism, default 2), FKV_SKIP_SANITIZERS=1 (development only).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${FKV_JOBS:-2}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
step() { printf '\n==== %s ====\n' "$*"; }

step "system packages (libgtest-dev; redis-server for the tier tests)"
for pkg in libgtest-dev redis-server; do
  if ! dpkg -s "$pkg" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "$pkg" ||
      { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "$pkg"; }
  fi
done

step "virtualenv build/test-venv (cmake, ninja, test extras)"
VENV=build/test-venv
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check cmake ninja
export PATH="$PWD/$VENV/bin:$PATH"

cpp_tests() {  # name, ctest filter, extra cmake args...
  local name="$1" filter="$2"
  shift 2
  step "C++ tests: $name"
  cmake -S . -B "build/$name" -G Ninja -DFKV_BUILD_TESTS=ON -DFKV_BUILD_PYTHON=OFF "$@" >/dev/null
  cmake --build "build/$name" -j "$JOBS"
  (cd "build/$name" && ctest --output-on-failure -j "$JOBS" ${filter:+-R "$filter"})
}

cpp_tests cpp-release "" -DCMAKE_BUILD_TYPE=Release
if [ "${FKV_SKIP_SANITIZERS:-0}" != 1 ]; then
  cpp_tests cpp-asan "" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFKV_SANITIZE=address,undefined
  cpp_tests cpp-tsan "Concurrent" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFKV_SANITIZE=thread
  step "Python threads under ThreadSanitizer (tests/tsan_python.sh)"
  # The extension joins the cpp-tsan build (its core objects are reused); 4 threads, 10 s.
  "$PY" -m pip install --quiet --disable-pip-version-check numpy pytest pybind11==3.1.0
  PYTHON="$PY" FKV_TSAN_BUILD=build/cpp-tsan tests/tsan_python.sh
fi

step "Python package: pip install .[test,torch,hf]"
CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" "$PY" -m pip install --quiet --disable-pip-version-check ".[test,torch,hf]"

step "Python tests"
FKV_REQUIRE_TORCH=1 "$PY" -m pytest -q -p no:cacheprovider tests/python
