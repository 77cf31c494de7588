"""Build against build: batch_metadata and one decode step (append_batch + batch_metadata) of 256
sequences, alternated in fresh processes (10 rounds), each the median of 300 calls. Used for the
cost of BatchMetadata.num_computed (builds: see bench/ab_common.py).

    python bench/ab_batch_metadata.py /tmp/builds/before /tmp/builds/after

Prints each build's medians (µs) and the median and range of the per-round ratios second / first.
"""

from __future__ import annotations

import statistics
import sys

from ab_common import alternate, run_child

CHILD = """
import time
import numpy as np
cfg = ferrum_kv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=8, block_size=16,
                            num_blocks=40000)
cache = ferrum_kv.PagedKvCache(cfg)
rng = np.random.default_rng(0)
ids = np.arange(256)
for s in ids:
    cache.add_sequence(int(s), rng.integers(0, 1000, int(rng.integers(100, 1000))))
tokens = np.ones(256, np.int32)
meta, step = [], []
for _ in range(300):
    t0 = time.perf_counter(); cache.batch_metadata(ids); t1 = time.perf_counter()
    cache.append_batch(ids, tokens); cache.batch_metadata(ids); t2 = time.perf_counter()
    meta.append(t1 - t0); step.append(t2 - t1)
print(json.dumps([sorted(meta)[150], sorted(step)[150]]))
"""


def main() -> None:
    before, after = sys.argv[1:3]
    results = alternate([before, after], 10, lambda folder: run_child(folder, CHILD))
    first, second = results.values()
    for folder, rounds in results.items():
        print(folder, "batch_metadata µs", statistics.median(x[0] for x in rounds) * 1e6,
              "step µs", statistics.median(x[1] for x in rounds) * 1e6)
    for k, name in enumerate(("batch_metadata", "step")):
        ratios = [y[k] / x[k] for x, y in zip(first, second)]
        print(f"{name}: ratio second / first, median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
