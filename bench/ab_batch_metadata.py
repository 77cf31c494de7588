"""Build against build: batch_metadata and one decode step (append_batch + batch_metadata) of 256
sequences, alternated in fresh processes (10 rounds), each the median of 300 calls. Used for the
cost of BatchMetadata.num_computed; builds are package folders as bench/ab_builds.py describes.

    python bench/ab_batch_metadata.py /tmp/builds/before /tmp/builds/after

Prints each build's medians (µs) and the median and range of the per-round ratios second / first.
"""
import json, subprocess, sys, statistics
CHILD = r'''
import sys, time, json
sys.meta_path = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
sys.path.insert(0, sys.argv[1])
import numpy as np, ferrum_kv as fkv, os
assert fkv.__file__.startswith(sys.argv[1]), fkv.__file__
cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=8, block_size=16, num_blocks=40000)
cache = fkv.PagedKvCache(cfg)
rng = np.random.default_rng(0)
ids = np.arange(256)
for s in ids:
    cache.add_sequence(int(s), rng.integers(0, 1000, int(rng.integers(100, 1000))))
toks = np.ones(256, np.int32)
meta, step = [], []
for _ in range(300):
    t0 = time.perf_counter(); cache.batch_metadata(ids); t1 = time.perf_counter()
    cache.append_batch(ids, toks); cache.batch_metadata(ids); t2 = time.perf_counter()
    meta.append(t1 - t0); step.append(t2 - t1)
meta.sort(); step.sort()
print(json.dumps([meta[150], step[150]]))
'''
builds = sys.argv[1:]
res = {b: [] for b in builds}
for r in range(10):
    for b in (builds if r % 2 == 0 else builds[::-1]):
        out = subprocess.run([sys.executable, "-c", CHILD, b], capture_output=True, text=True, check=True).stdout
        res[b].append(json.loads(out))
for b in builds:
    print(b, "batch_metadata us", statistics.median(x[0] for x in res[b]) * 1e6, "step us", statistics.median(x[1] for x in res[b]) * 1e6)
a, b = builds
print("ratio after/before per round (median): meta", statistics.median(y[0]/x[0] for x, y in zip(res[a], res[b])),
      "step", statistics.median(y[1]/x[1] for x, y in zip(res[a], res[b])))
print("range meta", min(y[0]/x[0] for x, y in zip(res[a], res[b])), max(y[0]/x[0] for x, y in zip(res[a], res[b])))
