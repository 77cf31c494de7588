"""Build against build: the whole serving demo (`ferrum-kv demo --sessions 4`) with --threads 1
and --threads 2, alternated in fresh processes (builds: see bench/ab_common.py). Made to compare
the library's own worker threads with OpenMP, which ran the attention kernels before.

    python bench/ab_demo_threads.py --rounds 4 /tmp/builds/openmp /tmp/builds/own-threads

Prints, per thread count, each build's median wall time and the median per-round ratio second /
first.
"""

from __future__ import annotations

import argparse
import json
import statistics

from ab_common import alternate, run_child

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs=2, help="two folders that each hold a ferrum_kv package")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    results = alternate(args.builds, args.rounds,
                        lambda folder: run_child(folder, CHILD, json.dumps(THREADS)))
    first, second = results.values()
    for k, threads in enumerate(THREADS):
        ratios = [y[k] / x[k] for x, y in zip(first, second)]
        print(f"--threads {threads}: first {statistics.median(r[k] for r in first):.2f} s, "
              f"second {statistics.median(r[k] for r in second):.2f} s, second / first "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
