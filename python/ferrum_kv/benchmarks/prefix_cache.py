"""Prefix caching: full-hit lookup latency, a whole-prompt hit, and a shared-system-prompt workload.

  lookup     a 32K-token prompt whose blocks are all cached: add_sequence end to end (hashing
             included) and free_sequence, best of 20
  whole      the same prompt minus 3 tokens (it ends inside a block) stored with 128,256 logits
             (Llama 3's vocabulary): add_sequence_with_logits, which reuses every block and
             returns a copy of the logits, against add_sequence of it, best of 20 each
  workload   1,000 requests drawn from 20 distinct 2K-token system prompts plus a random
             200-token user turn, 32 running at a time, 16 decode steps each: hit rate (tokens
             served from the cache / prompt tokens) and blocks saved (allocations avoided)

    python bench/bench_prefix_cache.py  (or python -m ferrum_kv.benchmarks.prefix_cache) [--json FILE]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ferrum_kv as fkv
from ferrum_kv.benchmarks.common import Result, report

BLOCK_SIZE = 16


def make_cache(num_blocks: int, max_prompt_logits: int = 0) -> fkv.PagedKvCache:
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=1, block_size=BLOCK_SIZE,
                          num_blocks=num_blocks, enable_prefix_caching=True,
                          max_prompt_logits=max_prompt_logits)
    return fkv.PagedKvCache(cfg)


def full_hit_lookup(num_tokens: int = 32768, repeat: int = 20) -> dict:
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 2**31 - 1, num_tokens, dtype=np.int32)
    cache = make_cache(num_tokens // BLOCK_SIZE + 8)
    cache.add_sequence(0, prompt)
    cache.mark_computed(0, num_tokens)
    cache.free_sequence(0)
    best_add = best_free = float("inf")
    for seq_id in range(1, repeat + 1):
        start = time.perf_counter()
        hit = cache.add_sequence(seq_id, prompt)
        middle = time.perf_counter()
        cache.free_sequence(seq_id)
        end = time.perf_counter()
        best_add, best_free = min(best_add, middle - start), min(best_free, end - middle)
    assert hit == num_tokens - BLOCK_SIZE, hit
    cache.check_invariants()
    return {"case": f"{num_tokens}-token prompt, full hit", "add_sequence_us": f"{best_add * 1e6:.0f}",
            "free_sequence_us": f"{best_free * 1e6:.0f}", "hit_tokens": hit,
            "M_hit_tokens_per_s": f"{hit / best_add / 1e6:.0f}"}


def whole_prompt_hit(num_tokens: int = 32765, vocab: int = 128256, repeat: int = 20) -> dict:
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, 2**31 - 1, num_tokens, dtype=np.int32)
    logits = rng.standard_normal(vocab).astype(np.float32)
    cache = make_cache(num_tokens // BLOCK_SIZE + 8, max_prompt_logits=1)
    cache.add_sequence(0, prompt)
    cache.mark_computed(0, num_tokens)
    cache.store_logits(0, logits)
    best_whole = best_plain = float("inf")
    for seq_id in range(1, repeat + 1):
        start = time.perf_counter()
        hit, got = cache.add_sequence_with_logits(seq_id, prompt)
        middle = time.perf_counter()
        cache.free_sequence(seq_id)
        plain = time.perf_counter()
        partial = cache.add_sequence(seq_id + repeat, prompt)
        end = time.perf_counter()
        cache.free_sequence(seq_id + repeat)
        best_whole, best_plain = min(best_whole, middle - start), min(best_plain, end - plain)
    assert hit == num_tokens and np.array_equal(got, logits), hit
    assert partial == num_tokens // BLOCK_SIZE * BLOCK_SIZE, partial
    cache.check_invariants()
    return {"case": f"{num_tokens}-token prompt with {vocab} stored logits, whole hit",
            "with_logits_us": f"{best_whole * 1e6:.0f}", "add_sequence_us": f"{best_plain * 1e6:.0f}",
            "left_to_prefill": num_tokens - partial}


def shared_prompt_workload(requests: int = 1000, prompts: int = 20, system_len: int = 2048,
                           user_len: int = 200, running: int = 32, decode_steps: int = 16,
                           num_blocks: int = 4096) -> dict:
    rng = np.random.default_rng(1)
    systems = [rng.integers(0, 2**31 - 1, system_len, dtype=np.int32) for _ in range(prompts)]
    cache = make_cache(num_blocks)
    prompt_tokens = hit_tokens = 0
    active: list[int] = []
    start = time.perf_counter()
    for seq_id in range(requests):
        user = rng.integers(0, 2**31 - 1, user_len, dtype=np.int32)
        tokens = np.concatenate([systems[int(rng.integers(prompts))], user])
        hit = cache.add_sequence(seq_id, tokens)
        cache.mark_computed(seq_id, len(tokens))  # the engine prefilled the rest
        prompt_tokens += len(tokens)
        hit_tokens += hit
        active.append(seq_id)
        if len(active) == running:  # decode the batch, then retire it
            ids = np.array(active, np.int64)
            for _ in range(decode_steps):
                cache.append_batch(ids, np.ones(len(ids), np.int32))
            for s in active:
                cache.free_sequence(s)
            active.clear()
    elapsed = time.perf_counter() - start
    stats = cache.stats()
    cache.check_invariants()
    return {"case": f"{requests} requests, {prompts} x {system_len}-token system prompts + "
                    f"{user_len}-token turns", "hit_rate": f"{hit_tokens / prompt_tokens:.3f}",
            "blocks_saved": hit_tokens // BLOCK_SIZE,
            "blocks_allocated": stats["blocks_allocated"], "evictions": stats["evictions"],
            "bookkeeping_s": f"{elapsed:.2f}"}


def run(requests: int = 1000) -> Result:
    lookup, whole = full_hit_lookup(), whole_prompt_hit()
    workload = shared_prompt_workload(requests=requests)
    rows = [{"case": lookup["case"], "result": f"add_sequence {lookup['add_sequence_us']} us "
                                               f"({lookup['M_hit_tokens_per_s']} M hit tokens/s), "
                                               f"free_sequence {lookup['free_sequence_us']} us"},
            {"case": whole["case"], "result": f"add_sequence_with_logits {whole['with_logits_us']} us "
                                              f"(nothing left to prefill); add_sequence "
                                              f"{whole['add_sequence_us']} us "
                                              f"({whole['left_to_prefill']} tokens left to prefill)"},
            {"case": workload["case"], "result": f"hit rate {workload['hit_rate']}, "
                                                 f"{workload['blocks_saved']} blocks saved, "
                                                 f"{workload['evictions']} evictions"}]
    return Result("Prefix cache: full-hit lookup (hashing included), a whole-prompt hit with stored "
                  "logits, and a shared-system-prompt workload", rows)


def quick() -> Result:
    return run(requests=200)


def main() -> None:
    parser = argparse.ArgumentParser(description="prefix-cache lookup and hit rate")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    report(run(args.requests), args.json)


if __name__ == "__main__":
    main()
