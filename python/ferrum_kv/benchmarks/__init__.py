"""The benchmark suite: each module compares a ferrum-kv path with its baseline side by side in
one process run and returns a Result (a table plus notes). `bench/bench_*.py` and
`ferrum-kv bench` (quick mode) run them.
"""

from __future__ import annotations

import importlib
import time

from ferrum_kv.benchmarks.common import machine

# Module names, in the order the suite runs them.
SUITE = ["block_pool", "scheduler", "block_hash", "prefix_cache", "attention"]


def run_quick_suite() -> int:
    """Run every benchmark in quick mode and print its table. Returns a process exit status."""
    print(f"machine: {machine()}")
    for name in SUITE:
        start = time.perf_counter()
        module = importlib.import_module(f"ferrum_kv.benchmarks.{name}")
        results = module.quick()
        for result in results if isinstance(results, list) else [results]:
            result.print()
        print(f"({time.perf_counter() - start:.1f} s)\n", flush=True)
    return 0
