"""Prefix hashing of one prompt: ferrum_kv block_hashes (C++ SHA-256 chain) against the same chain
in pure Python with hashlib (the way a Python prefix cache computes it), side by side in one run.

    python bench/bench_block_hash.py [--num-tokens N] [--block-size B] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ferrum_kv._core import block_hashes, sha256_impl  # noqa: E402
from common import best_time, machine, print_table, write_json  # noqa: E402


def python_block_hashes(tokens: np.ndarray, block_size: int, namespace: bytes = b"") -> list[bytes]:
    """The spec in pure Python, as fast as it gets: one bytes conversion, then a slice per block."""
    data = tokens.astype("<u4").tobytes()
    step = 4 * block_size
    parent = hashlib.sha256(b"ferrum-kv/v1" + namespace).digest()
    hashes = []
    for start in range(0, (len(tokens) // block_size) * step, step):
        parent = hashlib.sha256(parent + data[start:start + step]).digest()
        hashes.append(parent)
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-tokens", type=int, default=32768)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    tokens = np.random.default_rng(0).integers(0, 150_000, size=args.num_tokens, dtype=np.int32)
    assert block_hashes(tokens, args.block_size) == python_block_hashes(tokens, args.block_size)
    num_blocks = args.num_tokens // args.block_size
    timings = {
        f"ferrum_kv ({sha256_impl()})": best_time(lambda: block_hashes(tokens, args.block_size)),
        "python hashlib": best_time(lambda: python_block_hashes(tokens, args.block_size)),
    }
    baseline = timings["python hashlib"]
    rows = [{
        "implementation": name,
        "us_per_prompt": f"{t * 1e6:.1f}",
        "tokens_per_s": f"{args.num_tokens / t / 1e6:.1f}M",
        "ns_per_block": f"{t / num_blocks * 1e9:.1f}",
        "speedup": f"{baseline / t:.1f}x",
    } for name, t in timings.items()]
    print(f"machine: {machine()}")
    print(f"block_hashes of a {args.num_tokens}-token prompt, block_size {args.block_size} "
          f"({num_blocks} blocks), best of 7; SHA-256 implementation: {sha256_impl()}")
    print_table(rows, list(rows[0]))
    write_json(args.json, {"machine": machine(), "sha256_impl": sha256_impl(),
                           "num_tokens": args.num_tokens, "block_size": args.block_size,
                           "rows": rows})


if __name__ == "__main__":
    main()
