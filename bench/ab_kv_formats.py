"""Storage formats against bfloat16 "exact", interleaved in one process: the quantized-K/V targets
of issue 13 (BENCHMARKS.md) measured so that the machine's drifting load hits every format alike.

    python bench/ab_kv_formats.py --case decode --context 4096 --batch 8 --threads 2
    python bench/ab_kv_formats.py --case prefill --context 2048 --threads 1 --rounds 5
    python bench/ab_kv_formats.py --case decode --context 1024 --batch 8 --hot   # K/V in cache
    python bench/ab_kv_formats.py --build /tmp/builds/before ...   # another build (ab_common.py)

Each (format, precision) variant has its own KvStorage (bench_attention's PagedSetup: K/V rotated
over several hundred MB, so that no call finds its K/V in the caches; --hot keeps calling layer 0).
A round times every variant once, `--calls` calls each, in an order reversed every other round;
per variant the table gives the median over rounds of the wall time and the process CPU time per
call, and the median (and range) of the per-round ratio bfloat16-exact time / variant time (> 1:
faster than bfloat16 exact), for wall and for CPU time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if "--build" in sys.argv:  # before importing ferrum_kv: that build, not the installed one
    _folder = os.path.abspath(sys.argv[sys.argv.index("--build") + 1])
    sys.meta_path = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
    sys.path.insert(0, _folder)

import numpy as np  # noqa: E402

import ferrum_kv._core as core  # noqa: E402
from ferrum_kv.benchmarks.attention import HEAD_DIM, NUM_Q_HEADS, PagedSetup  # noqa: E402

BASELINE = ("bfloat16", "exact")


def make_call(setup: PagedSetup, case: str, q: np.ndarray, threads: int, precision: str,
              hot: bool):
    out = np.empty_like(q)
    layer = (lambda: 0) if hot else (lambda: next(setup.layers))
    if case == "decode":
        return lambda: core.paged_attention_decode_tables(
            q, setup.storage, layer(), setup.block_tables, setup.context_lens, out=out,
            num_threads=threads, precision=precision)
    query_lens = setup.context_lens.copy()
    return lambda: core.paged_attention_prefill_tables(
        q, setup.storage, layer(), setup.block_tables, setup.context_lens, query_lens, out=out,
        num_threads=threads, precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["decode", "prefill"], default="decode")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8, help="decode only (prefill: 1 prompt)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default="bfloat16,int8,fp8_e4m3,fp8_e5m2,int4")
    parser.add_argument("--precisions", default="exact")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=0, help="calls per sample (0: about 50 ms)")
    parser.add_argument("--hot", action="store_true", help="one layer: K/V stay in the caches")
    parser.add_argument("--build", help="a folder holding a ferrum_kv package to run instead")
    args = parser.parse_args()

    batch = args.batch if args.case == "decode" else 1
    rows = batch if args.case == "decode" else args.context
    q = np.random.default_rng(1).standard_normal((rows, NUM_Q_HEADS, HEAD_DIM), dtype=np.float32)
    variants = [(f, p) for f in args.formats.split(",") for p in args.precisions.split(",")]
    if BASELINE not in variants:
        variants.insert(0, BASELINE)
    setups = {f: PagedSetup(f, batch, args.context) for f in dict.fromkeys(f for f, _ in variants)}
    calls = {v: make_call(setups[v[0]], args.case, q, args.threads, v[1], args.hot)
             for v in variants}
    for fn in calls.values():  # warm-up (pages, threads)
        fn()
    n = args.calls
    if n <= 0:
        start = time.perf_counter()
        calls[BASELINE]()
        n = max(1, int(0.05 / (time.perf_counter() - start)))
    wall: dict = {v: [] for v in variants}
    cpu: dict = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            fn = calls[v]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            cpu[v].append((time.process_time() - c0) / n)
            wall[v].append((time.perf_counter() - w0) / n)
    print(f"{args.case} context {args.context} batch {batch} threads {args.threads} "
          f"{'hot' if args.hot else 'from DRAM'}; {args.rounds} rounds x {n} calls; "
          f"{os.path.dirname(os.path.dirname(core.__file__))}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<20}{'wall ms':>10}{'cpu ms':>10}  {'vs bf16 wall (range)':<24}"
          f"vs bf16 cpu (range)")
    for v in variants:
        def ratio(times):
            rs = [b / x for b, x in zip(times[BASELINE], times[v])]
            return f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"
        print(f"{v[0] + ' ' + v[1]:<20}{statistics.median(wall[v]) * 1e3:>10.3f}"
              f"{statistics.median(cpu[v]) * 1e3:>10.3f}  {ratio(wall):<24}{ratio(cpu)}")


if __name__ == "__main__":
    main()
