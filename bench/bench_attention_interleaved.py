"""Decode attention, every storage format in both precisions, timed interleaved (A/B alternating).

    python bench/bench_attention_interleaved.py [--batch 8] [--context 4096] [--threads 1]
                                                [--formats bfloat16,int8,...] [--rounds 21]

For a shared, noisy machine: each round calls every (format, precision) once in turn, so that
load changes hit all of them alike, and the medians over the rounds are compared; on one thread
the time is the process's CPU time (time.process_time), which other processes' load does not add
to. `vs_bf16` is the bfloat16 "exact" median divided by the row's median. Same geometry and
setup as bench_attention.py (ferrum_kv.benchmarks.attention.PagedSetup: 32 query heads, 8 KV
heads, head_dim 128, block 16, K/V rotated over several hundred MB so calls read from DRAM).
Every timed call follows an untimed one on the previous layer of the same cache, as in a model's
forward pass (and as bench_attention.py's loops of calls): a call right after one on another
cache measured up to 1.3x slower than the same call after one on its own cache's previous layer,
which, when the formats' "exact" calls followed other caches and their "fast" calls their own,
flattered "fast" (until 2026-12-06).
"""

import argparse
import time

import numpy as np

from ferrum_kv.benchmarks.attention import FORMATS, HEAD_DIM, NUM_Q_HEADS, PRECISIONS, PagedSetup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--isas", default="auto",
                        help="kernel variants, comma-separated (e.g. avx512,avx2); the first one's "
                             "bfloat16 exact is the baseline")
    args = parser.parse_args()
    formats = args.formats.split(",")
    if "bfloat16" not in formats:
        formats.insert(0, "bfloat16")  # the ratios' baseline
    isas = args.isas.split(",")
    cases = [(dtype, precision, isa) for dtype in formats for precision in PRECISIONS
             for isa in isas]
    setups = {dtype: PagedSetup(dtype, args.batch, args.context) for dtype in formats}
    q = np.random.default_rng(1).standard_normal((args.batch, NUM_Q_HEADS, HEAD_DIM),
                                                 dtype=np.float32)
    out = np.empty_like(q)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    times = {case: [] for case in cases}
    for _ in range(args.rounds):
        for dtype, precision, isa in cases:
            setup = setups[dtype]

            def call():
                setup.decode(q, out=out, isa=isa, num_threads=args.threads, precision=precision)

            call()  # untimed: the timed call follows one on the previous layer of its cache
            start = clock()
            call()
            times[dtype, precision, isa].append(clock() - start)
    clock_name = "CPU time" if args.threads == 1 else "wall time"
    print(f"decode, batch {args.batch}, context {args.context}, {args.threads} threads, "
          f"{clock_name}, median of {args.rounds} interleaved rounds")
    base = np.median(times["bfloat16", "exact", isas[0]])
    for dtype, precision, isa in cases:
        median = np.median(times[dtype, precision, isa])
        print(f"{dtype:9s} {precision:5s} {isa:7s} {median * 1e3:8.2f} ms  "
              f"vs_bf16 {base / median:.2f}x")


if __name__ == "__main__":
    main()
