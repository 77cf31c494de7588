"""Build against build: the part every bench/ab_*.py script shares.

A build is a copy of the package (the `ferrum_kv` folder with its compiled `_core` module) in a
folder of its own:

    pip install .      (a regular install: an editable one's package folder lacks _core)
    mkdir -p /tmp/builds/before
    cp -r "$(python -c 'import ferrum_kv, os; print(os.path.dirname(ferrum_kv.__file__))')" /tmp/builds/before/
    ... change, pip install . again, copy to /tmp/builds/after ...

Code layout moves timings by up to 0.7% between builds of nearly the same code and the machine's
load drifts over minutes, so builds are alternated round by round, each round in fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable

# Put first in every child: the build's folder first on sys.path; an editable install's import
# hook would otherwise win over it. argv[1] is the build's folder.
CHILD_PRELUDE = """
import json, os, sys
sys.meta_path = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
sys.path.insert(0, sys.argv[1])
import ferrum_kv
assert ferrum_kv.__file__.startswith(sys.argv[1] + os.sep), ferrum_kv.__file__
"""


def run_child(folder: str, body: str, *args: str) -> Any:
    """Runs CHILD_PRELUDE + body in a fresh interpreter against the build in folder; body prints
    one JSON value, which is returned."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD_PRELUDE + body, folder, *args], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{folder}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def alternate(builds: list[str], rounds: int, run: Callable[[str], Any]) -> dict[str, list[Any]]:
    """run(folder) for every build, `rounds` times, the order reversed every other round; returns
    each build's results in round order."""
    folders = [os.path.abspath(b) for b in builds]
    results: dict[str, list[Any]] = {f: [] for f in folders}
    for r in range(rounds):
        for folder in folders if r % 2 == 0 else folders[::-1]:
            results[folder].append(run(folder))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return results


def compare_two(doc: str, default_rounds: int, body: str, *args: str) -> tuple[list, list]:
    """The command line of a two-build script (two folders, --rounds): runs body (one JSON list
    of times per run) alternately against both; returns (first's runs, second's runs)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("builds", nargs=2, help="two folders that each hold a ferrum_kv package")
    parser.add_argument("--rounds", type=int, default=default_rounds)
    options = parser.parse_args()
    results = alternate(options.builds, options.rounds,
                        lambda folder: run_child(folder, body, *args))
    first, second = results.values()
    return first, second


def print_ratios(labels: list[str], first: list, second: list, scale: float, unit: str) -> None:
    """Per label k: each build's median of its runs' k-th time (times scale, in unit) and the
    median and range of the per-round ratios second / first."""
    width = max(len(label) for label in labels) + 2
    print(f"{'':<{width}}{'first ' + unit:>12}{'second ' + unit:>12}  second / first (range)")
    for k, label in enumerate(labels):
        ratios = [y[k] / x[k] for x, y in zip(first, second)]
        print(f"{label:<{width}}{statistics.median(r[k] for r in first) * scale:>12.2f}"
              f"{statistics.median(r[k] for r in second) * scale:>12.2f}  "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
