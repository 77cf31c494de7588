"""Quantize-on-write cost: vLLM's cpu_attn_reshape_and_cache into its fp8 caches against the same
call into its bfloat16 cache, and ferrum_kv's PagedKvCache.write_kv into int8 / fp8 / int4
storage against write_kv into bfloat16 storage, same tokens, side by side in one process.
Optional: vLLM is never a dependency; where it is not importable this script says so and exits 0.

    OPENBLAS_NUM_THREADS=1 python bench/bench_kv_write_vllm.py [--threads 1]
        [--vllm-block-sizes 32,128] [--timer cpu|wall] [--json FILE]

Geometry: 8 KV heads, head_dim 128 (a Llama-3-8B-like layer), N(0, 1) K/V. Two cases, as
bench/quantize_write_bench.cc: a decode step (256 sequences, one new token each, every token in
its own block) and a prefill chunk (512 consecutive tokens of one sequence); vLLM at each of
--vllm-block-sizes (its fp8 caches need a multiple of 32; 128 is its CPU default), ferrum_kv at
block 16. Each side takes its natural input: vLLM the model's bfloat16 K/V (its bf16 write is
then a copy into its layout; its fp8 write divides by the per-tensor scale 1.0 and converts),
ferrum_kv float32 K/V (rounded to bfloat16, or quantized per (token, head) row). The ratios are each implementation's quantized
write over its own bfloat16 write (issue 13: ours at most 1.5x; vLLM measured 2.7-3.3x). vLLM's
op runs on torch's threads (--threads), ferrum_kv's write_kv on the calling thread. All
callables are timed in interleaved rounds, best of 7, by the calling thread's CPU time with one
thread (--timer cpu, the default) or by wall time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import vllm_cpu_attn as va  # noqa: E402  (bench/, next to this script)

KV_HEADS, HEAD_DIM = 8, 128
CASES = {"decode step (256 sequences)": 256, "prefill chunk (512 tokens)": 512}
OUR_FORMATS = ("bfloat16", "int8", "fp8_e4m3", "fp8_e5m2", "int4")


def our_write(fmt: str, decode: bool, k: np.ndarray, v: np.ndarray):
    """A callable writing k, v [n, KV_HEADS, HEAD_DIM] float32 into a fresh cache of fmt."""
    import ferrum_kv as fkv

    n, block = len(k), 16
    config = fkv.CacheConfig(num_layers=1, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                             block_size=block, num_blocks=n if decode else n // block, dtype=fmt)
    cache = fkv.PagedKvCache(config)
    if decode:  # one full block per sequence; the step writes its last slot
        for seq in range(n):
            cache.add_sequence(seq, np.arange(seq * block, (seq + 1) * block))
        slots = np.concatenate([cache.slot_mapping(seq, block - 1, block) for seq in range(n)])
    else:
        cache.add_sequence(0, np.arange(n))
        slots = cache.slot_mapping(0, 0, n)
    return lambda: cache.write_kv(0, slots, k, v)


def vllm_write(vllm, kv_cache_dtype: str, decode: bool, k, v, block_size: int, allow_amx: bool):
    """A callable writing bfloat16 torch k, v into a fresh vLLM cache of kv_cache_dtype."""
    torch, ops, isa_fn, _ = vllm
    n = len(k)
    num_blocks = n if decode else -(-n // block_size)
    isa = va.attn_isa(isa_fn, torch.bfloat16, block_size, HEAD_DIM, kv_cache_dtype, allow_amx)
    key_cache, value_cache = va.new_cache(torch, num_blocks, KV_HEADS, block_size, HEAD_DIM,
                                          torch.bfloat16, kv_cache_dtype)
    if decode:  # the last slot of each sequence's block, blocks in shuffled order
        order = np.random.default_rng(3).permutation(num_blocks)
        slots = torch.from_numpy(order * block_size + block_size - 1)
    else:
        slots = torch.arange(n, dtype=torch.int64)

    def write():
        ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa,
                                       kv_cache_dtype=kv_cache_dtype)

    return write, isa


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for vLLM's op")
    parser.add_argument("--vllm-block-sizes", default="32,128",
                        help="comma-separated multiples of 32 (vLLM's vec16 kernel has no fp8); "
                             "one row per case and block size")
    parser.add_argument("--vllm-amx", action="store_true",
                        help="let vLLM pick its amx ISA (see bench/vllm_cpu_attn.py)")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="cpu (with --threads 1): the calling thread's CPU time (see "
                             "bench/vllm_cpu_attn.py); wall: wall time")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    block_sizes = [int(x) for x in args.vllm_block_sizes.split(",")]
    if any(bs % 32 for bs in block_sizes):
        parser.error("--vllm-block-sizes must be multiples of 32")

    vllm = va.import_both("write")
    if isinstance(vllm, int):
        return vllm
    from ferrum_kv.benchmarks.common import Result, machine, write_json

    torch = vllm[0]
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; load average {os.getloadavg()}")
    timer = va.timer_for(args.timer, args.threads)
    rng = np.random.default_rng(0)
    rows, isas = [], set()
    for (case, n), block_size in itertools.product(CASES.items(), block_sizes):
        decode = case.startswith("decode")
        k = rng.standard_normal((n, KV_HEADS, HEAD_DIM), dtype=np.float32)
        v = rng.standard_normal((n, KV_HEADS, HEAD_DIM), dtype=np.float32)
        tk, tv = (torch.from_numpy(x).to(torch.bfloat16) for x in (k, v))
        fns = {}
        for kvd in ("auto",) + va.FP8_CACHE_DTYPES:
            fns[f"vllm {kvd}"], isa = vllm_write(vllm, kvd, decode, tk, tv, block_size,
                                                 args.vllm_amx)
            isas.add(isa)
        for fmt in OUR_FORMATS:
            fns[f"ours {fmt}"] = our_write(fmt, decode, k, v)
        with torch.inference_mode():
            t = va.timed_rounds(fns, timer)
        row = {"case": case, "vllm_block": block_size,
               "vllm_bf16_us": f"{t['vllm auto'] * 1e6:.1f}"}
        for kvd in va.FP8_CACHE_DTYPES:
            row[f"vllm_{kvd}/bf16"] = f"{t[f'vllm {kvd}'] / t['vllm auto']:.2f}x"
        row["ours_bf16_us"] = f"{t['ours bfloat16'] * 1e6:.1f}"
        for fmt in OUR_FORMATS[1:]:
            row[f"ours_{fmt}/bf16"] = f"{t[f'ours {fmt}'] / t['ours bfloat16']:.2f}x"
        print(row, flush=True)
        rows.append(row)
    import vllm as vllm_module

    result = Result(
        "Quantize-on-write cost over each implementation's own bfloat16 write (8 KV heads, "
        "head_dim 128)", rows,
        [f"vLLM {vllm_module.__version__} cpu_attn_reshape_and_cache, isa "
         f"{'/'.join(sorted(isas))}, {args.threads} torch "
         "thread(s), bfloat16 input; ferrum_kv PagedKvCache.write_kv, block 16, float32 input; "
         f"timed by {timer} time, best of 7 interleaved rounds",
         "X/bf16 = time of the quantized write / time of the same implementation's bfloat16 "
         "write of the same tokens (< 1.5x: issue 13's target for ours)"])
    result.print()
    write_json(args.json, {"machine": machine(), "threads": args.threads, **result.as_json()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
