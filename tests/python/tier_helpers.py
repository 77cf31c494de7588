"""Shared by the tier tests: caches with random K/V, and every storage dtype."""

import numpy as np

import ferrum_kv as fkv

# Every storage dtype (tiers copy blocks as raw bytes, quantization parameters included).
DTYPES = ["float32", "float16", "bfloat16", "int8", "fp8_e4m3", "fp8_e5m2", "int4"]


def tokens(n, base=0):
    """Token ids base .. base + n - 1 (int32)."""
    return np.arange(base, base + n, dtype=np.int32)


def config(dtype="float16", num_blocks=64, block_size=4, **kw):
    return fkv.CacheConfig(num_layers=2, num_kv_heads=2, head_dim=8, block_size=block_size,
                           num_blocks=num_blocks, dtype=dtype, enable_prefix_caching=True, **kw)


def block_bytes(cache, blocks):
    """The raw bytes of blocks (a copy), [len(blocks), bytes_per_block] uint8."""
    arena = cache.storage.array()
    raw = arena.reshape(arena.shape[0], -1).view(np.uint8)
    return raw[np.asarray(blocks)].copy()


def compute(cache, seq_id, tokens, rng, namespace=b""):
    """add_sequence, random bytes into every block it did not reuse, then free it with every token
    computed (publishing its full blocks). Returns (hit tokens, the bytes of its full blocks)."""
    hit = cache.add_sequence(seq_id, tokens, namespace=namespace)
    cache.check_invariants()
    arena = cache.storage.array()
    raw = arena.reshape(arena.shape[0], -1).view(np.uint8)
    table = cache.block_table(seq_id)
    bs = cache.config.block_size
    for block in table[hit // bs:]:
        raw[block] = rng.integers(0, 256, size=raw.shape[1], dtype=np.uint8)
    full = len(tokens) // bs
    data = raw[table[:full]].copy()
    cache.free_sequence(seq_id, num_computed=len(tokens))
    cache.check_invariants()
    return hit, data


def check_no_pins(cache):
    """After flush_tiers with no sequence: every block is free or cached and evictable."""
    cache.check_invariants()
    s = cache.stats()
    assert s["tier_write_queue"] == 0
    assert s["num_sequences"] == 0
    assert s["evictable_blocks"] == s["cached_blocks"]
    assert s["free_blocks"] + s["cached_blocks"] == s["num_blocks"]
