"""Batched allocate+free through the Python API: ferrum_kv.BlockPool against a pure-Python pool
with the same semantics (deque free list + list of ref counts, the way vLLM's Python block pool
works), side by side in one run.

    python bench/bench_block_pool.py  (or python -m ferrum_kv.benchmarks.block_pool) [--num-blocks N] [--json FILE]
"""

from __future__ import annotations

import argparse
from collections import deque

import ferrum_kv as fkv
from ferrum_kv.benchmarks.common import Result, best_time, report


class PythonBlockPool:
    """Deque free list and a list of ref counts, all-or-nothing allocate, validated free."""

    def __init__(self, num_blocks: int):
        self.free_list = deque(range(num_blocks))
        self.ref_counts = [0] * num_blocks

    def allocate(self, n: int) -> list[int]:
        if n > len(self.free_list):
            raise fkv.OutOfBlocksError(f"cannot allocate {n} blocks")
        ids = [self.free_list.popleft() for _ in range(n)]
        for i in ids:
            self.ref_counts[i] = 1
        return ids

    def free(self, ids: list[int]) -> None:
        for i in ids:
            if self.ref_counts[i] <= 0:
                raise ValueError(f"double free of block {i}")
        for i in ids:
            self.ref_counts[i] -= 1
            if self.ref_counts[i] == 0:
                self.free_list.append(i)


def run(num_blocks: int = 4096, batches: tuple[int, ...] = (1, 16, 256)) -> Result:
    rows = []
    for batch in batches:
        ours = fkv.BlockPool(num_blocks=num_blocks)
        python = PythonBlockPool(num_blocks)
        t_ours = best_time(lambda: ours.free(ours.allocate(batch)))
        t_python = best_time(lambda: python.free(python.allocate(batch)))
        ours.check_invariants()
        rows.append({
            "batch": batch,
            "ferrum_kv_blocks_per_s": f"{batch / t_ours / 1e6:.2f}M",
            "python_blocks_per_s": f"{batch / t_python / 1e6:.2f}M",
            "ferrum_kv_us_per_call": f"{t_ours * 1e6:.2f}",
            "ns_per_block": f"{t_ours / batch * 1e9:.1f}",
            "speedup": f"{t_python / t_ours:.1f}x",
        })
    return Result("Block pool: allocate(n) + free(ids) through Python vs a pure-Python pool "
                  "(best of 7)", rows)


def quick() -> Result:
    return run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-blocks", type=int, default=4096)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    report(run(args.num_blocks), args.json)


if __name__ == "__main__":
    main()
