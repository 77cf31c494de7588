"""The per-call cost of torch tensor arguments (docs/torch.md), side by side in one run: the same
call with NumPy arrays, with torch CPU tensors (the bindings' torch fast path: Tensor.numpy()), and
with the tensors wrapped in a plain DLPack producer (the generic path: torch's __dlpack_device__
and __dlpack__); and torch views of the arena: torch.from_dlpack against torch.from_numpy. Small
calls (one decode token), where the per-argument cost shows. Needs torch (the [torch] extra); not
part of `ferrum-kv bench`.

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


class Producer:
    """A DLPack producer that is not a torch.Tensor: forwards to the tensor's own protocol."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        return self.tensor.__dlpack__(**kwargs)


def row(operation: str, numpy_s: float, torch_s: float, dlpack_s: float) -> dict:
    return {
        "operation": operation,
        "numpy_us": f"{numpy_s * 1e6:.2f}",
        "torch_us": f"{torch_s * 1e6:.2f}",
        "torch_via_dlpack_us": f"{dlpack_s * 1e6:.2f}",
        "torch/numpy": f"{torch_s / numpy_s:.2f}x",
        "dlpack/numpy": f"{dlpack_s / numpy_s:.2f}x",
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
        k_dl, slots_dl = Producer(k_torch), Producer(slots_torch)
        rows.append(row(f"write_kv, 1 token, {dtype} (k, v, slots)",
                        best_time(lambda: kv.write_kv(0, slots, k_np, k_np)),
                        best_time(lambda: kv.write_kv(0, slots_torch, k_torch, k_torch)),
                        best_time(lambda: kv.write_kv(0, slots_dl, k_dl, k_dl))))

    kv = cache("float32")
    metadata = kv.batch_metadata([1])
    q = rng.standard_normal((1, Q_HEADS, DIM)).astype(np.float32)
    out = np.empty_like(q)
    arrays = (q, out, metadata.block_tables, metadata.context_lens)
    tensors = [torch.from_numpy(a) for a in arrays]
    producers = [Producer(t) for t in tensors]

    def decode(q, out, tables, lens):
        return core.paged_attention_decode_tables(q, kv.storage, 0, tables, lens, out=out,
                                                  num_threads=1)

    rows.append(row("decode attention, 1 sequence x 64 tokens (q, out, tables, lens)",
                    best_time(lambda: decode(*arrays)), best_time(lambda: decode(*tensors)),
                    best_time(lambda: decode(*producers))))

    views = {dtype: cache(dtype).storage.key_cache(0) for dtype in ("float32", "bfloat16")}
    view_rows = [{
        "view": "key_cache(0)",
        "from_numpy_float32_us": f"{best_time(lambda: torch.from_numpy(views['float32'])) * 1e6:.2f}",
        "from_dlpack_float32_us": f"{best_time(lambda: torch.from_dlpack(views['float32'])) * 1e6:.2f}",
        "from_dlpack_bfloat16_us": f"{best_time(lambda: torch.from_dlpack(views['bfloat16'])) * 1e6:.2f}",
    }]
    return [
        Result(f"Torch tensor arguments against NumPy arrays ({KV_HEADS} KV heads, {Q_HEADS} "
               f"query heads, head_dim {DIM}; torch {torch.__version__}), best of 7", rows),
        Result("Torch views of the arena (an existing view; bfloat16 has no from_numpy "
               "equivalent), best of 7", view_rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if torch is None:
        print("torch is not installed (pip install .[torch]): nothing to measure")
        sys.exit(0)
    results = run()
    report(results[0], args.json)
    results[1].print()


if __name__ == "__main__":
    main()
