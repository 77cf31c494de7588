"""Build against build: the scheduler benchmark's caching A/B for two or more builds, alternated.

Code layout moves the `--caching-ab` medians by up to 0.7% between builds of nearly the same
code, and the machine's load drifts over minutes; a change is judged by running both builds in
one session, alternating, each round in fresh processes. Each build is a copy of the package
(the `ferrum_kv` folder with its compiled `_core` module) in a folder of its own:

    pip install .      (a regular install: an editable one's package folder lacks _core)
    mkdir -p /tmp/builds/before
    cp -r "$(python -c 'import ferrum_kv, os; print(os.path.dirname(ferrum_kv.__file__))')" /tmp/builds/before/
    ... change, pip install . again, copy to /tmp/builds/after ...
    python bench/ab_builds.py --rounds 10 --pairs 60 /tmp/builds/before /tmp/builds/after

Prints, per build, the medians over all its pairs of the step, churn-round and whole-run ratios
(caching on / off, as `bench_scheduler.py --caching-ab` reports them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# Runs in a fresh interpreter with the build's folder first on sys.path; an editable install's
# import hook would otherwise win over it.
CHILD = """
import json, sys
sys.meta_path = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
import ferrum_kv, os
assert ferrum_kv.__file__.startswith(sys.argv[1] + os.sep), ferrum_kv.__file__
from ferrum_kv.benchmarks.scheduler import caching_overhead
result = caching_overhead(256, 300, int(sys.argv[2]))
print(json.dumps([[float(r[k]) for k in ("step_ratio", "churn_ratio", "total_ratio")]
                  for r in result.rows]))  # each pair's ratios, rounded to 3 decimals
"""


def run_build(folder: str, pairs: int) -> list[list[float]]:
    env = dict(os.environ, PYTHONPATH=folder, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, folder, str(pairs)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{folder}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="folders that each hold a ferrum_kv package")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=60, help="A/B pairs per build per round")
    args = parser.parse_args()
    folders = [os.path.abspath(b) for b in args.builds]
    rows: dict[str, list[list[float]]] = {f: [] for f in folders}
    for r in range(args.rounds):
        for folder in folders if r % 2 == 0 else folders[::-1]:
            rows[folder] += run_build(folder, args.pairs)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for folder in folders:
        medians = [statistics.median(row[k] for row in rows[folder]) for k in range(3)]
        # Medians of an even count may fall between two 3-decimal values: 4 decimals.
        print(f"{folder}: step {medians[0]:.4f}x, churn round {medians[1]:.4f}x, "
              f"whole run {medians[2]:.4f}x ({len(rows[folder])} pairs)")


if __name__ == "__main__":
    main()
