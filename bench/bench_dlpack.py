"""The per-call cost of torch tensors through DLPack (docs/torch.md), side by side in one run: the
same call with NumPy arrays, with torch CPU tensors (read through their __dlpack__), and with the
tensors' own .numpy() views (what a caller can pass for non-bfloat16 tensors); and torch views of
the arena: torch.from_dlpack against torch.from_numpy. Small calls (one decode token), where the
per-argument cost shows. Needs torch (the [torch] extra); not part of `ferrum-kv bench`.

    python bench/bench_dlpack.py [--json FILE]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import ferrum_kv as fkv
from ferrum_kv import _core as core
from ferrum_kv.benchmarks.common import Result, best_time, report

try:
    import torch
except ImportError:
    torch = None

KV_HEADS, Q_HEADS, DIM, BLOCK = 8, 32, 128, 16


def cache(dtype: str) -> fkv.PagedKvCache:
    config = fkv.CacheConfig(num_layers=1, num_kv_heads=KV_HEADS, head_dim=DIM, block_size=BLOCK,
                             num_blocks=64, dtype=dtype)
    kv = fkv.PagedKvCache(config)
    kv.add_sequence(1, np.arange(64))
    kv.mark_computed(1, 64)
    return kv


def row(operation: str, numpy_s: float | None, torch_s: float, numpy_view_s: float | None) -> dict:
    if numpy_s is None:  # no NumPy equivalent
        return {"operation": operation, "numpy_us": "-", "torch_dlpack_us": f"{torch_s * 1e6:.2f}",
                "torch_numpy_view_us": "-", "dlpack_overhead_us": "-", "torch/numpy": "-"}
    return {
        "operation": operation,
        "numpy_us": f"{numpy_s * 1e6:.2f}",
        "torch_dlpack_us": f"{torch_s * 1e6:.2f}",
        "torch_numpy_view_us": "-" if numpy_view_s is None else f"{numpy_view_s * 1e6:.2f}",
        "dlpack_overhead_us": f"{(torch_s - numpy_s) * 1e6:.2f}",
        "torch/numpy": f"{torch_s / numpy_s:.2f}x",
    }


def run() -> Result:
    rng = np.random.default_rng(0)
    rows = []
    for dtype in ("float32", "bfloat16"):
        kv = cache(dtype)
        slots = kv.slot_mapping(1, 63, 64)
        k = rng.standard_normal((1, KV_HEADS, DIM)).astype(np.float32)
        k_torch = torch.from_numpy(k).to(getattr(torch, dtype))
        k_np = k if dtype == "float32" else k_torch.view(torch.int16).numpy().view(np.uint16)
        slots_torch = torch.from_numpy(slots)
        rows.append(row(
            f"write_kv, 1 token, {dtype} (k, v, slots)",
            best_time(lambda: kv.write_kv(0, slots, k_np, k_np)),
            best_time(lambda: kv.write_kv(0, slots_torch, k_torch, k_torch)),
            best_time(lambda: kv.write_kv(0, slots_torch.numpy(), k_torch.numpy(),
                                          k_torch.numpy())) if dtype == "float32" else None))

    kv = cache("float32")
    metadata = kv.batch_metadata([1])
    q = rng.standard_normal((1, Q_HEADS, DIM)).astype(np.float32)
    out = np.empty_like(q)
    tensors = [torch.from_numpy(a) for a in (q, out, metadata.block_tables, metadata.context_lens)]

    def decode(q, out, tables, lens):
        return core.paged_attention_decode_tables(q, kv.storage, 0, tables, lens, out=out,
                                                  num_threads=1)

    rows.append(row("decode attention, 1 sequence x 64 tokens (q, out, tables, lens)",
                    best_time(lambda: decode(q, out, metadata.block_tables, metadata.context_lens)),
                    best_time(lambda: decode(*tensors)),
                    best_time(lambda: decode(*(t.numpy() for t in tensors)))))

    for dtype in ("float32", "bfloat16"):
        storage = cache(dtype).storage
        rows.append(row(
            f"torch view of key_cache(0), {dtype} (from_numpy | from_dlpack)",
            best_time(lambda: torch.from_numpy(storage.key_cache(0))) if dtype == "float32"
            else None,
            best_time(lambda: torch.from_dlpack(storage.key_cache(0))), None))
    return Result(
        f"DLPack: per-call cost of torch CPU tensors against NumPy arrays ({KV_HEADS} KV heads, "
        f"{Q_HEADS} query heads, head_dim {DIM}; torch {torch.__version__}), best of 7", rows,
        notes=["torch_numpy_view: the same call given t.numpy() (float32/int only: NumPy has no "
               "bfloat16)",
               "from_numpy cannot give bfloat16 (it would be torch.uint16): no baseline"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if torch is None:
        print("torch is not installed (pip install .[torch]): nothing to measure")
        sys.exit(0)
    report(run(), args.json)


if __name__ == "__main__":
    main()
