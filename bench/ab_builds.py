"""Build against build: the scheduler benchmark's caching A/B for two or more builds, alternated
(builds: see bench/ab_common.py).

    python bench/ab_builds.py --rounds 10 --pairs 60 /tmp/builds/before /tmp/builds/after

Prints, per build, the medians over all its pairs of the step, churn-round and whole-run ratios
(caching on / off, as `bench_scheduler.py --caching-ab` reports them).
"""

from __future__ import annotations

import argparse
import statistics

from ab_common import alternate, run_child

CHILD = """
from ferrum_kv.benchmarks.scheduler import caching_overhead
result = caching_overhead(256, 300, int(sys.argv[2]))
print(json.dumps([[float(r[k]) for k in ("step_ratio", "churn_ratio", "total_ratio")]
                  for r in result.rows]))  # each pair's ratios, rounded to 3 decimals
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="+", help="folders that each hold a ferrum_kv package")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=60, help="A/B pairs per build per round")
    args = parser.parse_args()
    results = alternate(args.builds, args.rounds,
                        lambda folder: run_child(folder, CHILD, str(args.pairs)))
    for folder, rounds in results.items():
        rows = [row for pairs in rounds for row in pairs]
        medians = [statistics.median(row[k] for row in rows) for k in range(3)]
        # Medians of an even count may fall between two 3-decimal values: 4 decimals.
        print(f"{folder}: step {medians[0]:.4f}x, churn round {medians[1]:.4f}x, "
              f"whole run {medians[2]:.4f}x ({len(rows)} pairs)")


if __name__ == "__main__":
    main()
