"""Prefix hashing of one prompt: ferrum_kv block_hashes (C++ SHA-256 chain) against the same chain
in pure Python with hashlib (the way a Python prefix cache computes it), side by side in one run.

    python bench/bench_block_hash.py  (or python -m ferrum_kv.benchmarks.block_hash) [--num-tokens N] [--block-size B] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from ferrum_kv._core import block_hashes, sha256_impl
from ferrum_kv.benchmarks.common import Result, best_time, report


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


def run(num_tokens: int = 32768, block_size: int = 16) -> Result:
    tokens = np.random.default_rng(0).integers(0, 150_000, size=num_tokens, dtype=np.int32)
    assert block_hashes(tokens, block_size) == python_block_hashes(tokens, block_size)
    num_blocks = num_tokens // block_size
    timings = {
        f"ferrum_kv ({sha256_impl()})": best_time(lambda: block_hashes(tokens, block_size)),
        "python hashlib": best_time(lambda: python_block_hashes(tokens, block_size)),
    }
    baseline = timings["python hashlib"]
    rows = [{
        "implementation": name,
        "us_per_prompt": f"{t * 1e6:.1f}",
        "tokens_per_s": f"{num_tokens / t / 1e6:.1f}M",
        "ns_per_block": f"{t / num_blocks * 1e9:.1f}",
        "speedup": f"{baseline / t:.1f}x",
    } for name, t in timings.items()]
    return Result(f"Prefix hashing: block_hashes of a {num_tokens}-token prompt, block_size "
                  f"{block_size} ({num_blocks} blocks), best of 7", rows)


def quick() -> Result:
    return run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-tokens", type=int, default=32768)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    report(run(args.num_tokens, args.block_size), args.json)


if __name__ == "__main__":
    main()
