"""Decode attention with K/V in the caches against K/V from memory: how much of a kernel's time
is arithmetic and how much is waiting for memory, per storage format and precision.

    python bench/bench_attention_memory_bound.py [--formats bfloat16,int8,...] [--threads 1]
                                                 [--isas avx512] [--rounds 15]

Two setups per format, timed interleaved (A/B alternating, median of the rounds; CPU time with
one thread, wall time otherwise), Llama-3-8B-like geometry (bench/bench_attention.py):
  cached: batch 1, 128 keys, two layers (at most 1.1 MiB of K/V for bfloat16: L2 on the
          measured machine), the time of a 1-key call subtracted (the call's fixed cost);
  memory: batch 8, 4,096 keys, rotating over 768 MiB of K/V (bench_attention.py's decode case).
Each timed call (or run of 20) follows an untimed call on the same cache's previous layer.
Each row gives the nanoseconds per (key, KV head) of both (each covers the 4 query heads of the
KV head), their ratio, and the K/V bytes read per second from memory. A kernel whose "memory"
time is well above its "cached" time is bound by memory: speeding up its arithmetic does not
shorten the decode, and its speed-up over another format is at most the ratio of their bytes
per token unless it also reads memory faster.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ferrum_kv.benchmarks.attention import (  # noqa: E402
    HEAD_DIM, NUM_KV_HEADS, NUM_Q_HEADS, PRECISIONS, PagedSetup, token_bytes)

CACHED_KEYS = 128
MEMORY_BATCH, MEMORY_KEYS = 8, 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="bfloat16,int8,fp8_e4m3,int4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isas", default="auto", help="kernel variants, comma-separated")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    formats, isas = args.formats.split(","), args.isas.split(",")
    setups = {}
    for dtype in formats:
        setups[dtype, "cached"] = PagedSetup(dtype, 1, CACHED_KEYS, rotate_bytes=0)
        setups[dtype, "one key"] = PagedSetup(dtype, 1, 1, rotate_bytes=0)
        setups[dtype, "memory"] = PagedSetup(dtype, MEMORY_BATCH, MEMORY_KEYS)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    cases = [(dtype, precision, isa) for dtype in formats for precision in PRECISIONS
             for isa in isas]
    times: dict = {}
    rng = np.random.default_rng(1)
    queries = {batch: rng.standard_normal((batch, NUM_Q_HEADS, HEAD_DIM), dtype=np.float32)
               for batch in (1, MEMORY_BATCH)}
    for round_ in range(args.rounds):
        for dtype, precision, isa in cases:
            for kind in ("cached", "one key", "memory"):
                setup = setups[dtype, kind]
                q = queries[setup.context_lens.shape[0]]
                calls = 1 if kind == "memory" else 20  # short calls: the mean of 20

                def call():
                    setup.decode(q, isa=isa, num_threads=args.threads, precision=precision)

                call()  # untimed (bench_attention_interleaved.py says why)
                start = clock()
                for _ in range(calls):
                    call()
                times.setdefault((dtype, precision, isa, kind), []).append(
                    (clock() - start) / calls)
        print(f"round {round_ + 1}/{args.rounds}", end="\r", flush=True)
    clock_name = "CPU time" if args.threads == 1 else "wall time"
    print(f"decode, {args.threads} threads, {clock_name}, median of {args.rounds} interleaved "
          f"rounds; ns per (key, KV head)")
    print(f"{'format':9s} {'precision':9s} {'isa':7s} {'cached':>8s} {'memory':>8s} "
          f"{'ratio':>6s} {'GB/s':>6s}")
    for dtype, precision, isa in cases:
        def median(kind):
            return float(np.median(times[dtype, precision, isa, kind]))
        cached = (median("cached") - median("one key")) / ((CACHED_KEYS - 1) * NUM_KV_HEADS)
        memory = median("memory") / (MEMORY_BATCH * MEMORY_KEYS * NUM_KV_HEADS)
        bandwidth = 2 * token_bytes(dtype) / memory / 1e9
        print(f"{dtype:9s} {precision:9s} {isa:7s} {cached * 1e9:8.1f} {memory * 1e9:8.1f} "
              f"{memory / cached:6.2f} {bandwidth:6.2f}")


if __name__ == "__main__":
    main()
