"""Build against build: paged-attention calls where the threads' start-up and hand-off cost shows
(small batches, short contexts) and where it does not, alternated in fresh processes (builds: see
bench/ab_common.py). Made to compare the library's own worker threads with OpenMP, which ran the
kernels before.

    python bench/ab_attention_threads.py --rounds 10 /tmp/builds/openmp /tmp/builds/own-threads

Geometry: 32 query heads over 8 KV heads, head_dim 128, block size 16, bfloat16, one layer; K/V
random. Each case is the median of its calls in one process (after warm-up calls); prints, per
case, each build's median over the rounds (µs) and the median and range of the per-round ratios
second / first.
"""

from __future__ import annotations

import json

from ab_common import compare_two, print_ratios

# (name, kind, batch or query tokens, context, threads)
CASES = [
    ("decode b1 ctx512 1 thread", "decode", 1, 512, 1),
    ("decode b1 ctx512 2 threads", "decode", 1, 512, 2),
    ("decode b8 ctx1024 2 threads", "decode", 8, 1024, 2),
    ("decode b32 ctx1024 2 threads", "decode", 32, 1024, 2),
    ("decode b1 ctx16384 2 threads", "decode", 1, 16384, 2),
    ("prefill 512 tokens 2 threads", "prefill", 512, 512, 2),
]

CHILD = """
import statistics, time
import numpy as np
from ferrum_kv import _core as core
cases = json.loads(sys.argv[2])
cfg = core.CacheConfig(num_layers=1, num_kv_heads=8, head_dim=128, block_size=16,
                       num_blocks=4096, dtype="bfloat16")
storage = core.KvStorage(cfg)
rng = np.random.default_rng(0)
storage.array()[...] = rng.integers(0x3c00, 0x3f80, storage.array().shape, dtype=np.uint16)
times = []
for name, kind, rows, context, threads in cases:
    batch = 1 if kind == "prefill" else rows
    blocks = -(-context // 16)
    tables = rng.permutation(4096)[: batch * blocks].astype(np.int32).reshape(batch, blocks)
    lens = np.full(batch, context, np.int32)
    q = rng.standard_normal((rows, 32, 128)).astype(np.float32)
    out = np.empty_like(q)
    if kind == "decode":
        call = lambda: core.paged_attention_decode_tables(q, storage, 0, tables, lens, out=out,
                                                          num_threads=threads)
    else:
        queries = np.array([rows], np.int32)
        call = lambda: core.paged_attention_prefill_tables(q, storage, 0, tables, lens, queries,
                                                           out=out, num_threads=threads)
    for _ in range(5):
        call()
    samples = []
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline or len(samples) < 20:
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    times.append(statistics.median(samples))
print(json.dumps(times))
"""


def main() -> None:
    first, second = compare_two(__doc__, 10, CHILD, json.dumps(CASES))
    print_ratios([case[0] for case in CASES], first, second, 1e6, "µs")


if __name__ == "__main__":
    main()
