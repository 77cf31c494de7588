"""Optional: prefix hashing and full-hit lookup, ferrum-kv against vLLM and pure Python, in one run.

  ferrum-kv block_hashes  the public SHA-256 chain (SHA-NI where the CPU has it)
  ferrum-kv full hit      PagedKvCache.add_sequence of a prompt whose blocks are all cached, end to
                          end: its own key chain, the lookup and the references (the same case as
                          bench_prefix_cache.py), best of 20
  vllm request hashing    vLLM's block hasher (get_request_block_hasher, chained per 16-token
                          block) over a whole prompt, from an empty hash list; SHA-256 (vLLM's
                          default, pickle + hashlib) and, when the xxhash package is installed,
                          vLLM's xxhash option
  vllm prefix-hit lookup  KVCacheManager.get_computed_blocks for a request whose whole prompt is
                          cached (another request with the same prompt was allocated and freed);
                          vLLM caps a hit at num_tokens - 1, so all but the last block hits
  python hashlib chain    hashlib.sha256(parent digest + 16 little-endian uint32 tokens) per block

    vllm-venv/bin/python bench/bench_prefix_hash_vllm.py [--tokens 32768] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

import ferrum_kv as fkv
from ferrum_kv.benchmarks.common import best_time, machine, print_table, write_json
from ferrum_kv.benchmarks.prefix_cache import full_hit_lookup

BLOCK_SIZE = 16


def python_chain(token_bytes: bytes, num_blocks: int) -> bytes:
    step = BLOCK_SIZE * 4
    view = memoryview(token_bytes)
    digest = b"\0" * 32
    sha256 = hashlib.sha256
    for i in range(num_blocks):
        digest = sha256(digest + view[i * step:(i + 1) * step]).digest()
    return digest


def main() -> int:
    parser = argparse.ArgumentParser(description="Prefix hashing baselines: vLLM and Python")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    try:
        import torch
        from vllm.sampling_params import SamplingParams
        from vllm.utils import hashing
        from vllm.v1.core.kv_cache_manager import KVCacheManager
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.kv_cache_interface import (
            FullAttentionSpec,
            KVCacheConfig,
            KVCacheGroupSpec,
            KVCacheTensor,
        )
        from vllm.v1.request import Request
    except Exception as e:  # ImportError, or e.g. "operator torchvision::nms does not exist"
        print(f"vLLM is not importable here ({type(e).__name__}: {e}); "
              "skipping the vLLM baselines.")
        return 0

    n = args.tokens - args.tokens % BLOCK_SIZE
    num_blocks = n // BLOCK_SIZE
    prompt = np.random.default_rng(0).integers(0, 32000, n).tolist()
    sampling = SamplingParams(max_tokens=16)
    rows = []

    # vLLM request hashing: the hasher computes every block's hash when the list is empty.
    hash_fns = [("sha256", hashing.sha256)]
    try:
        hash_fns.append(("xxhash", hashing.get_hash_fn_by_name("xxhash")))
    except Exception as e:  # the xxhash package is optional in vLLM
        print(f"(vLLM's xxhash option unavailable: {e})")
    for name, fn in hash_fns:
        init_none_hash(fn)
        hasher = get_request_block_hasher(BLOCK_SIZE, fn)
        req = Request("hash", prompt, sampling, None, block_hasher=None)
        assert len(hasher(req)) == num_blocks
        t = best_time(lambda: hasher(req), repeat=5, min_time=0.2)
        rows.append({"case": f"vllm request hashing ({name})", "tokens": n,
                     "ms": f"{t * 1e3:.2f}", "M_tokens_per_s": f"{n / t / 1e6:.2f}",
                     "us_per_block": f"{t / num_blocks * 1e6:.3f}"})

    # vLLM prefix-hit lookup on a fully cached prompt (SHA-256, the default).
    init_none_hash(hashing.sha256)
    hasher = get_request_block_hasher(BLOCK_SIZE, hashing.sha256)
    spec = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=8, head_size=128,
                             dtype=torch.bfloat16)
    pool_blocks = num_blocks + 64
    page = spec.page_size_bytes
    config = KVCacheConfig(
        num_blocks=pool_blocks,
        kv_cache_tensors=[KVCacheTensor(size=page * pool_blocks, layers=["layers.0"],
                                        layer_stride=page * pool_blocks, block_stride=page)],
        kv_cache_groups=[KVCacheGroupSpec(layer_names=["layers.0"], kv_cache_spec=spec)])
    manager = KVCacheManager(kv_cache_config=config, max_model_len=n + BLOCK_SIZE,
                             scheduler_block_size=BLOCK_SIZE, hash_block_size=BLOCK_SIZE,
                             enable_caching=True)
    first = Request("first", prompt, sampling, None, block_hasher=hasher)
    blocks, computed, _ = manager.get_computed_blocks(first)
    assert computed == 0
    assert manager.allocate_slots(first, first.num_tokens, computed, blocks) is not None
    manager.free(first)  # the blocks stay cached (evictable) in the free queue
    second = Request("second", prompt, sampling, None, block_hasher=hasher)
    _, hit, _ = manager.get_computed_blocks(second)
    assert hit == n - BLOCK_SIZE, hit
    t = best_time(lambda: manager.get_computed_blocks(second), repeat=5, min_time=0.2)
    rows.append({"case": "vllm prefix-hit lookup (get_computed_blocks)", "tokens": hit,
                 "ms": f"{t * 1e3:.2f}", "M_tokens_per_s": f"{hit / t / 1e6:.2f}",
                 "us_per_block": f"{t / (hit // BLOCK_SIZE) * 1e6:.3f}"})

    # ferrum-kv, same prompt length, same process.
    tokens = np.asarray(prompt, dtype=np.int32)
    t = best_time(lambda: fkv.block_hashes(tokens, BLOCK_SIZE), repeat=5, min_time=0.2)
    rows.append({"case": f"ferrum-kv block_hashes ({fkv._core.sha256_impl()})", "tokens": n,
                 "ms": f"{t * 1e3:.2f}", "M_tokens_per_s": f"{n / t / 1e6:.2f}",
                 "us_per_block": f"{t / num_blocks * 1e6:.3f}"})
    hit = full_hit_lookup(n)
    t = float(hit["add_sequence_us"]) * 1e-6
    rows.append({"case": "ferrum-kv full-hit add_sequence (keys + lookup)", "tokens": hit["hit_tokens"],
                 "ms": f"{t * 1e3:.3f}", "M_tokens_per_s": f"{hit['hit_tokens'] / t / 1e6:.2f}",
                 "us_per_block": f"{t / (hit['hit_tokens'] // BLOCK_SIZE) * 1e6:.3f}"})

    # Pure Python: hashlib.sha256 chained over little-endian uint32 token bytes.
    token_bytes = np.asarray(prompt, dtype="<u4").tobytes()
    t = best_time(lambda: python_chain(token_bytes, num_blocks), repeat=5, min_time=0.2)
    rows.append({"case": "python hashlib.sha256 chain (LE uint32)", "tokens": n,
                 "ms": f"{t * 1e3:.2f}", "M_tokens_per_s": f"{n / t / 1e6:.2f}",
                 "us_per_block": f"{t / num_blocks * 1e6:.3f}"})

    print(f"machine: {machine()}")
    print(f"{n}-token prompt, {BLOCK_SIZE}-token blocks, best of 5")
    print_table(rows, list(rows[0]))
    write_json(args.json, {"machine": machine(), "tokens": n, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
