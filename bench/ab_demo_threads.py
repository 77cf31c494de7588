"""Build against build: the whole serving demo (`ferrum-kv demo --sessions 4`) with --threads 1
and --threads 2, alternated in fresh processes (builds: see bench/ab_common.py). Made to compare
the library's own worker threads with OpenMP, which ran the attention kernels before.

    python bench/ab_demo_threads.py --rounds 4 /tmp/builds/openmp /tmp/builds/own-threads

Prints, per thread count, each build's median wall time and the median per-round ratio second /
first.
"""

from __future__ import annotations

import json

from ab_common import compare_two, print_ratios

THREADS = ["1", "2"]

CHILD = """
import contextlib, io, time
from ferrum_kv.cli import main
times = []
for threads in json.loads(sys.argv[2]):
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        main(["demo", "--threads", threads, "--sessions", "4", "--no-progress"])
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def main() -> None:
    first, second = compare_two(__doc__, 4, CHILD, json.dumps(THREADS))
    print_ratios([f"--threads {t}" for t in THREADS], first, second, 1.0, "s")


if __name__ == "__main__":
    main()
