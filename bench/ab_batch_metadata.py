"""Build against build: batch_metadata and one decode step (append_batch + batch_metadata) of 256
sequences, alternated in fresh processes (10 rounds), each the median of 300 calls. Used for the
cost of BatchMetadata.num_computed (builds: see bench/ab_common.py).

    python bench/ab_batch_metadata.py /tmp/builds/before /tmp/builds/after

Prints each build's medians (µs) and the median and range of the per-round ratios second / first.
"""

from __future__ import annotations

from ab_common import compare_two, print_ratios

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
    first, second = compare_two(__doc__, 10, CHILD)
    print_ratios(["batch_metadata", "step"], first, second, 1e6, "µs")


if __name__ == "__main__":
    main()
