#!/usr/bin/env bash
# The Python threaded stress test (tests/python/test_threaded_stress.py) against a ThreadSanitizer
# build of the extension: builds $FKV_TSAN_BUILD (-fsanitize=thread), stages its _core*.so with a
# copy of python/ferrum_kv in build/py-tsan-pkg, and runs the test there with libtsan preloaded
# (CPython is not instrumented; tests/tsan_python.supp names the few reports it causes).
# First a self-check: a deliberate race in the extension (tests/tsan_race_probe.py) must be
# reported. Then any ThreadSanitizer report stops the run (halt_on_error=1): non-zero exit status.
# Environment: PYTHON (an interpreter with numpy, pytest, pybind11, cmake, ninja; default python3),
# FKV_JOBS (default 2), FKV_TSAN_BUILD (the build directory, default build/py-tsan), and the
# test's own FKV_STRESS_THREADS / FKV_STRESS_SECONDS / FKV_STRESS_OPS / FKV_STRESS_SEED (this
# script's default FKV_STRESS_SECONDS is 10).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
JOBS="${FKV_JOBS:-2}"
BUILD="${FKV_TSAN_BUILD:-build/py-tsan}"
STAGE=build/py-tsan-pkg

# FKV_TSAN_BUILD may name an existing TSan build (tests/run_all.sh: build/cpp-tsan): the extension
# joins it and reuses its compiled core.
cmake -S . -B "$BUILD" -G Ninja -DFKV_BUILD_PYTHON=ON \
  -DFKV_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" \
  >/dev/null
cmake --build "$BUILD" -j "$JOBS"

rm -rf "$STAGE"
mkdir -p "$STAGE"
cp -r python/ferrum_kv "$STAGE/"
find "$STAGE" -name '__pycache__' -prune -exec rm -rf {} +
rm -f "$STAGE"/ferrum_kv/_core*.so
cp "$BUILD"/_core*.so "$STAGE/ferrum_kv/"

LIBTSAN="$(gcc -print-file-name=libtsan.so)"
export FKV_STRESS_SECONDS="${FKV_STRESS_SECONDS:-10}"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 history_size=4 ${TSAN_OPTIONS:-}"
export TSAN_OPTIONS="$TSAN_OPTIONS suppressions=$PWD/tests/tsan_python.supp"
export PYTHONPATH="$PWD/$STAGE"
# The setup sees races in the extension: a deliberate one must be reported.
echo "ThreadSanitizer self-check: a deliberate race in write_kv (tests/tsan_race_probe.py)"
if probe="$(LD_PRELOAD="$LIBTSAN" "$PY" tests/tsan_race_probe.py 2>&1)" ||
   ! grep -q "WARNING: ThreadSanitizer: data race" <<<"$probe" ||
   ! grep -q "ferrum_kv::KvStorage::WriteTokens" <<<"$probe"; then
  printf '%s\n' "$probe" | tail -20
  echo "tests/tsan_python.sh: the deliberate race was not reported: the TSan setup is broken" >&2
  exit 1
fi
echo "  reported, as it must be"

# An editable install's import hook (scikit-build-core) would take ferrum_kv from elsewhere:
# dropped, and the module's file checked.
LD_PRELOAD="$LIBTSAN" "$PY" - "$PWD/$STAGE" "$@" <<'EOF'
import os, sys
stage = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
import ferrum_kv, ferrum_kv._core
for mod in (ferrum_kv, ferrum_kv._core):
    assert os.path.realpath(mod.__file__).startswith(os.path.realpath(stage) + os.sep), mod.__file__
print("ferrum_kv from", os.path.dirname(ferrum_kv._core.__file__), flush=True)
import pytest
sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "tests/python/test_threaded_stress.py",
                      *sys.argv[2:]]))
EOF
