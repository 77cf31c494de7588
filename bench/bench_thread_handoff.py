"""Two-thread decode calls where the hand-off to the helper thread dominates: a batch of 2,
context 300, 32 query heads over 8 KV heads, head_dim 128, float32. Prints the median time per
call with 2 threads (on a fresh team, then after one call that grew the team to 64 threads) and
with 1 thread.

    python bench/bench_thread_handoff.py

Run it against another build with PYTHONPATH (see bench/ab_common.py). On a 2-core machine the
2-thread figures depend on whether the second core is free: they are a check, not a benchmark to
quote alone.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import ferrum_kv as fkv
from ferrum_kv import _core as core


def per_call_us(call, calls: int = 300) -> float:
    for _ in range(20):
        call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    config = fkv.CacheConfig(num_layers=1, num_kv_heads=8, head_dim=128, block_size=16,
                             num_blocks=512)
    storage = fkv.KvStorage(config)
    tables = np.arange(64, dtype=np.int32).reshape(2, 32)
    lens = np.full(2, 300, np.int32)
    q = np.random.default_rng(0).random((2, 32, 128), dtype=np.float32)

    def decode(threads: int):
        return lambda: core.paged_attention_decode_tables(q, storage, 0, tables, lens,
                                                          num_threads=threads)

    print(f"2 threads, fresh team: {per_call_us(decode(2)):.1f} µs")
    decode(64)()
    print(f"2 threads after a 64-thread call: {per_call_us(decode(2)):.1f} µs")
    print(f"1 thread: {per_call_us(decode(1)):.1f} µs")


if __name__ == "__main__":
    main()
