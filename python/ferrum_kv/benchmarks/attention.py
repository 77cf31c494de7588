"""Paged-attention decode and prefill: ferrum_kv's CPU kernels against NumPy (gather blocks, then
matmul-softmax-matmul) and PyTorch SDPA on contiguous K/V, side by side in one run, with the
effective K/V read bandwidth as a percentage of a read ceiling measured in the same run.

    python bench/bench_attention.py [--preset tiny|quick|full|targets] [--threads 2] [--json FILE]
                                    [--formats float32,bfloat16,int8,fp8_e4m3,fp8_e5m2,int4]

Every storage format runs in both precisions ("exact", "fast"); `vs_bf16` is the bfloat16
"exact" time of the same case in the same run divided by the row's time (> 1: faster).

Geometry: Llama-3-8B-like (32 query heads, 8 KV heads, head_dim 128, block size 16), one layer
per call. Every implementation rotates over several hundred MB of K/V (layers of one cache, or
several tensor copies) so that no call finds its K/V in the caches. The read ceiling is a
`num_threads`-thread sum over 1 GiB (ferrum_kv._core.memory_read_probe), best of 5.
PyTorch columns are skipped when torch is not installed (it is never a dependency).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os

# OpenBLAS worker threads spin after each NumPy matmul and would steal the cores from the columns
# measured after them; the NumPy column's matmuls are small, so one BLAS thread costs it little.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import ferrum_kv._core as core  # noqa: E402
from ferrum_kv import reference as ref  # noqa: E402
from ferrum_kv.benchmarks.common import Result, best_time, machine, write_json  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # optional peer
    torch = None

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
GROUP = NUM_Q_HEADS // NUM_KV_HEADS
ROTATE_BYTES = 768 << 20  # K/V each implementation cycles through
MAX_CALL_BYTES = 1200 << 20  # cases reading more K/V per call are skipped (memory of the machine)

FORMATS = ["float32", "bfloat16", "int8", "fp8_e4m3", "fp8_e5m2", "int4"]
FLOAT_FORMATS = ("float32", "float16", "bfloat16")
PRECISIONS = ("exact", "fast")
DISTINCT_BLOCKS = 256  # quantized setups: blocks written (quantized) once, then their bytes tiled

PRESETS = {
    "tiny": dict(contexts=[4096], batches=[1, 8], prefill=[]),  # for `ferrum-kv bench`
    "quick": dict(contexts=[1024, 4096], batches=[1, 8], prefill=[2048]),
    "full": dict(contexts=[1024, 4096, 16384], batches=[1, 8, 32], prefill=[2048]),
    # The target cases only (4K context, batch 8; the 2,048-token prefill), without the
    # NumPy / PyTorch columns: a few minutes, to rerun the targets on a quieter machine.
    "targets": dict(contexts=[4096], batches=[8], prefill=[2048], peers=False),
}


def read_bandwidth(threads: int) -> float:
    """Bytes per second of a `threads`-thread read-only sum over 1 GiB, best of 5."""
    data = np.ones(1 << 27, dtype=np.uint64)  # 1 GiB, pages touched
    times = []
    for _ in range(5):
        times.append(best_time(lambda: core.memory_read_probe(data, threads), repeat=1, min_time=0))
    return data.nbytes / min(times)


def token_bytes(dtype: str) -> float:
    """Bytes of one token's K or V of one KV head (codes and parameters for quantized formats)."""
    config = core.CacheConfig(num_layers=1, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                              block_size=BLOCK_SIZE, num_blocks=1, dtype=dtype)
    return core.KvStorage(config).bytes_per_block / (2 * NUM_KV_HEADS * BLOCK_SIZE)


class PagedSetup:
    """One KvStorage with enough layers to rotate over rotate_bytes of K/V (2 layers at least);
    each sequence's blocks are shuffled."""

    def __init__(self, dtype: str, batch: int, context: int, seed: int = 0,
                 rotate_bytes: int = ROTATE_BYTES):
        rng = np.random.default_rng(seed)
        blocks_per_seq = -(-context // BLOCK_SIZE)
        num_blocks = batch * blocks_per_seq
        layer_bytes = num_blocks * 2 * NUM_KV_HEADS * BLOCK_SIZE * token_bytes(dtype)
        self.num_layers = max(2, math.ceil(rotate_bytes / layer_bytes))
        config = core.CacheConfig(num_layers=self.num_layers, num_kv_heads=NUM_KV_HEADS,
                                  head_dim=HEAD_DIM, block_size=BLOCK_SIZE, num_blocks=num_blocks,
                                  dtype=dtype)
        self.storage = core.KvStorage(config)
        arena = self.storage.array()
        if dtype in FLOAT_FORMATS:
            for b in range(0, num_blocks, 256):  # fill in slices to bound temporary memory
                values = rng.standard_normal(arena[b : b + 256].shape, dtype=np.float32)
                arena[b : b + 256] = (ref.float32_to_bfloat16_bits(values) if dtype == "bfloat16"
                                      else values)
        else:
            # N(0, 1) rows quantized by write_slot into layer 0 of the first blocks, whose
            # bytes then repeat over the layers and blocks: real codes and scales at distinct
            # addresses (a block's layers are consecutive regions of bytes_per_block / layers).
            distinct = min(num_blocks, DISTINCT_BLOCKS)
            for b in range(distinct):
                kv = rng.standard_normal((2, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), dtype=np.float32)
                for offset in range(BLOCK_SIZE):
                    self.storage.write_slot(b, 0, offset, kv[0, offset], kv[1, offset])
            layer_bytes = self.storage.bytes_per_block // self.num_layers
            for layer in range(1, self.num_layers):
                region = slice(layer * layer_bytes, (layer + 1) * layer_bytes)
                arena[:distinct, region] = arena[:distinct, :layer_bytes]
            for b in range(distinct, num_blocks, distinct):
                arena[b : b + distinct] = arena[: min(distinct, num_blocks - b)]
        self.block_tables = rng.permutation(num_blocks).astype(np.int32).reshape(batch, -1)
        self.context_lens = np.full(batch, context, dtype=np.int32)
        self.layers = itertools.cycle(range(self.num_layers))

    def decode(self, q: np.ndarray, **kwargs) -> np.ndarray:
        """One decode call over the next layer of the rotation (kwargs: out, isa, num_threads,
        precision, ... of paged_attention_decode_tables)."""
        return core.paged_attention_decode_tables(q, self.storage, next(self.layers),
                                                  self.block_tables, self.context_lens, **kwargs)


def bench_decode(dtype: str, batch: int, context: int, threads: int, ceiling: float,
                 peers: bool = True) -> list[dict]:
    """One row per precision ("exact" with the peers' columns when peers is set), each with the
    time in ms ("ferrum_ms") and in seconds ("seconds", for the ratios)."""
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * token_bytes(dtype)
    if kv_bytes > MAX_CALL_BYTES:
        return []
    setup = PagedSetup(dtype, batch, context)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((batch, NUM_Q_HEADS, HEAD_DIM), dtype=np.float32)
    out = np.empty_like(q)
    rows = []
    for precision in PRECISIONS:
        row = {"case": "decode", "dtype": dtype, "precision": precision, "batch": batch,
               "context": context, "kv_MB": f"{kv_bytes / 1e6:.0f}"}

        def ours():
            setup.decode(q, out=out, num_threads=threads, precision=precision)

        t = best_time(ours, repeat=5)
        row["seconds"] = t
        row["ferrum_ms"] = f"{t * 1e3:.3f}"
        row["ferrum_GBps"] = f"{kv_bytes / t / 1e9:.1f}"
        row["ferrum_%"] = f"{100 * kv_bytes / t / ceiling:.0f}"
        rows.append(row)
    row = rows[0]
    if not peers or dtype not in ("float32", "bfloat16"):
        return rows
    t = row["seconds"]

    if dtype == "float32":  # NumPy has no bfloat16 arithmetic
        def numpy_gather():
            layer = next(setup.layers)
            keys, values = setup.storage.key_cache(layer), setup.storage.value_cache(layer)
            for i in range(batch):
                ids = setup.block_tables[i]
                # [blocks, kv_heads, block_size, dim] -> [kv_heads, context, dim]
                k = keys[ids].transpose(1, 0, 2, 3).reshape(NUM_KV_HEADS, -1, HEAD_DIM)
                v = values[ids].transpose(1, 0, 2, 3).reshape(NUM_KV_HEADS, -1, HEAD_DIM)
                s = q[i].reshape(NUM_KV_HEADS, GROUP, HEAD_DIM) @ k.transpose(0, 2, 1)
                s = s / math.sqrt(HEAD_DIM)
                p = np.exp(s - s.max(axis=-1, keepdims=True))
                (p / p.sum(axis=-1, keepdims=True)) @ v

        t_np = best_time(numpy_gather, repeat=3)
        row["numpy_ms"] = f"{t_np * 1e3:.3f}"
        row["numpy_%"] = f"{100 * kv_bytes / t_np / ceiling:.0f}"
    del setup

    if torch is not None:
        torch_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
        copies = max(2, math.ceil(ROTATE_BYTES / kv_bytes))
        kv = [(torch.randn(batch, NUM_KV_HEADS, context, HEAD_DIM, dtype=torch_dtype),
               torch.randn(batch, NUM_KV_HEADS, context, HEAD_DIM, dtype=torch_dtype))
              for _ in range(copies)]
        # GQA folded into query rows: each KV head's GROUP query heads are GROUP query tokens.
        tq = torch.from_numpy(q).to(torch_dtype).reshape(batch, NUM_KV_HEADS, GROUP, HEAD_DIM)
        cycle = itertools.cycle(kv)

        def torch_sdpa():
            k, v = next(cycle)
            F.scaled_dot_product_attention(tq, k, v)

        with torch.inference_mode():
            t_torch = best_time(torch_sdpa, repeat=5)
        row["torch_ms"] = f"{t_torch * 1e3:.3f}"
        row["torch_%"] = f"{100 * kv_bytes / t_torch / ceiling:.0f}"
        row["ferrum_vs_torch"] = f"{t_torch / t:.2f}x"
        del kv
    return rows


def bench_prefill(dtype: str, tokens: int, threads: int, peers: bool = True) -> list[dict]:
    setup = PagedSetup(dtype, 1, tokens)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((tokens, NUM_Q_HEADS, HEAD_DIM), dtype=np.float32)
    out = np.empty_like(q)
    query_lens = setup.context_lens.copy()
    rows = []
    for precision in PRECISIONS:
        row = {"case": "prefill", "dtype": dtype, "precision": precision, "batch": 1,
               "context": tokens}

        def ours():
            core.paged_attention_prefill_tables(q, setup.storage, next(setup.layers),
                                                setup.block_tables, setup.context_lens,
                                                query_lens, out=out, num_threads=threads,
                                                precision=precision)

        t = best_time(ours, repeat=3, min_time=0)
        row["seconds"] = t
        row["ferrum_ms"] = f"{t * 1e3:.1f}"
        flops = 4 * NUM_Q_HEADS * HEAD_DIM * tokens * (tokens + 1) / 2
        row["ferrum_GFLOPs"] = f"{flops / t / 1e9:.0f}"
        rows.append(row)
    row = rows[0]
    t = row["seconds"]
    if peers and dtype in ("float32", "bfloat16") and torch is not None:
        torch_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
        tq = torch.from_numpy(q).to(torch_dtype).transpose(0, 1).unsqueeze(0).contiguous()
        # K/V already expanded to the query heads (outside the timing): SDPA's fastest CPU path.
        k = torch.randn(1, NUM_KV_HEADS, tokens, HEAD_DIM, dtype=torch_dtype)
        v = torch.randn(1, NUM_KV_HEADS, tokens, HEAD_DIM, dtype=torch_dtype)
        k, v = (x.repeat_interleave(GROUP, dim=1).contiguous() for x in (k, v))

        def torch_sdpa():
            F.scaled_dot_product_attention(tq, k, v, is_causal=True)

        with torch.inference_mode():
            t_torch = best_time(torch_sdpa, repeat=3, min_time=0)
        row["torch_ms"] = f"{t_torch * 1e3:.1f}"
        row["ferrum_vs_torch"] = f"{t_torch / t:.2f}x"
    return rows


def add_ratios(rows: list[dict]) -> None:
    """rows[i]["vs_bf16"]: the bfloat16 "exact" time of the same case / the row's time; drops
    the "seconds" field."""
    base = {(r["case"], r["batch"], r["context"]): r["seconds"] for r in rows
            if r["dtype"] == "bfloat16" and r["precision"] == "exact"}
    for r in rows:
        t = r.pop("seconds")
        key = (r["case"], r["batch"], r["context"])
        if key in base:
            r["vs_bf16"] = f"{base[key] / t:.2f}x"


def run(preset: str = "quick", threads: int = os.cpu_count() or 1,
        progress: bool = False, formats: list[str] | None = None) -> list[Result]:
    """Decode rows, then prefill rows (when the preset has any), as Results."""
    sizes = PRESETS[preset]
    if torch is not None:
        torch.set_num_threads(threads)
    ceiling = read_bandwidth(threads)
    context = (f"kernel {core.attention_isas()[0]}, {threads} threads, torch "
               f"{torch.__version__ if torch is not None else 'not installed'}; read ceiling "
               f"({threads}-thread sum over 1 GiB) {ceiling / 1e9:.1f} GB/s; % = K/V bytes read "
               "per call / time / ceiling")
    formats = formats or FORMATS
    if "bfloat16" not in formats:
        formats = ["bfloat16"] + list(formats)  # the ratios' baseline
    decode_rows, notes = [], [context]
    notes.append("fast precision: low-precision kernels for " + ", ".join(
        f"{d} {core.attention_fast_isas(d) or '(none: the exact code)'}" for d in formats))
    for ctx, batch in itertools.product(sizes["contexts"], sizes["batches"]):
        for dtype in formats:
            rows = bench_decode(dtype, batch, ctx, threads, ceiling, sizes.get("peers", True))
            if not rows:
                notes.append(f"skipped decode {dtype} batch {batch} context {ctx}: K/V over "
                             f"{MAX_CALL_BYTES >> 20} MiB per call")
            decode_rows += rows
            if progress:
                for row in rows:
                    print(row, flush=True)
    add_ratios(decode_rows)
    results = [Result("Paged attention decode (Llama-3-8B-like layer: 32 q heads, 8 KV heads, "
                      "head_dim 128)", decode_rows, notes)]
    prefill_rows = [row for tokens in sizes["prefill"] for dtype in formats
                    for row in bench_prefill(dtype, tokens, threads, sizes.get("peers", True))]
    if prefill_rows:
        add_ratios(prefill_rows)
        results.append(Result("Paged attention prefill (causal, one prompt)", prefill_rows))
    return results


def quick() -> list[Result]:
    return run("tiny", formats=["float32", "bfloat16", "int8"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help="storage formats, comma-separated (bfloat16 always runs: the "
                        "ratios' baseline; default %(default)s)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results = run(args.preset, args.threads, progress=True, formats=args.formats.split(","))
    for result in results:
        result.print()
    write_json(args.json, {"machine": machine(), "threads": args.threads,
                           "results": [r.as_json() for r in results]})


if __name__ == "__main__":
    main()
