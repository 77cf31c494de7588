"""Storage tiers (docs/tiers.md): restore throughput from the disk tier and from Redis, a second
replica against recomputing the prefill, and the cost of background writes on a decode step.

Restore: one cache writes a prompt's blocks to the tier; a second cache (the second replica)
restores them with add_sequence (probe, read, check, copy into its arena), repeated after
reset_prefix_cache. Reported in GB/s of K/V next to, in the same run, a NumPy memcpy of the same
bytes and a bare redis-py GET loop over the same keys.

Second replica: the restore time from Redis against the prefill it saves, estimated as
2 x parameters x tokens FLOPs at the float32 matmul GFLOP/s NumPy measures in this run.

Decode step: append_batch + batch_metadata + paged_attention_decode (one layer) over 256
sequences, on a cache with a disk tier (its writer thread copying out and writing the blocks the
steps publish) and on one without, interleaved step by step (A/B), best of N medians.

Needs redis-server on PATH (apt-get install redis-server) and redis-py (pip install
'ferrum-kv[redis]'); started on a free loopback port in a temporary directory.

    python bench/bench_tiers.py                 # Llama-3-8B geometry, bfloat16, 16K tokens
    python bench/bench_tiers.py --tokens 4096   # less memory
    python bench/bench_tiers.py --decode-steps 0  # the restore figures only
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import ferrum_kv as fkv
from ferrum_kv.benchmarks.common import Result, report
from ferrum_kv.tiers import DiskTier, RedisTier

LLAMA3_8B = dict(num_layers=32, num_kv_heads=8, head_dim=128)
LLAMA3_8B_PARAMETERS = 8.03e9
BLOCK = 16


def start_redis(directory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             directory, "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


def config(tokens, num_layers=LLAMA3_8B["num_layers"], extra_blocks=8):
    return fkv.CacheConfig(num_kv_heads=LLAMA3_8B["num_kv_heads"], head_dim=LLAMA3_8B["head_dim"],
                           num_layers=num_layers, block_size=BLOCK,
                           num_blocks=tokens // BLOCK + extra_blocks, dtype="bfloat16",
                           enable_prefix_caching=True)


def fill_and_publish(cache, prompt):
    """A prompt with random K/V, published (as a computed prefill would)."""
    cache.add_sequence(1, prompt)
    arena = cache.storage.array()
    raw = arena.reshape(arena.shape[0], -1).view(np.uint8)
    rng = np.random.default_rng(0)
    for block in cache.block_table(1):
        raw[block] = rng.integers(0, 256, raw.shape[1], dtype=np.uint8)
    cache.free_sequence(1, num_computed=len(prompt))
    cache.flush_tiers()


def restore_seconds(cache, prompt, repeat):
    """Best time of add_sequence restoring every full block but the last token's from the
    tiers, and the bytes restored."""
    best = float("inf")
    for _ in range(repeat):
        cache.reset_prefix_cache()
        start = time.perf_counter()
        hit = cache.add_sequence(2, prompt)
        best = min(best, time.perf_counter() - start)
        cache.free_sequence(2)
    assert hit == len(prompt) - BLOCK, hit
    return best, hit // BLOCK * cache.config.bytes_per_block


def memcpy_seconds(nbytes, repeat):
    src = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return best


def redis_get_loop_seconds(url, keys, repeat):
    import redis

    client = redis.Redis.from_url(url)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for key in keys:
            client.get(key)
        best = min(best, time.perf_counter() - start)
    client.close()
    return best


def matmul_gflops():
    a = np.random.default_rng(2).standard_normal((2048, 2048), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 ** 3 / best / 1e9


def decode_steps(tier_dir, sequences, context, steps):
    """Median step time with and without a disk tier, interleaved: (with, without) seconds."""
    rng = np.random.default_rng(3)
    caches = {}
    for name in ("with", "without"):
        cfg = config(sequences * (context + steps + BLOCK), num_layers=2,
                     extra_blocks=2 * sequences)
        cache = (fkv.PagedKvCache(cfg, tiers=[DiskTier(tier_dir)], model_id="bench")
                 if name == "with" else fkv.PagedKvCache(cfg))
        for s in range(sequences):
            # Lengths spread over a block, so that about 1/16 of the sequences publish a block
            # each step.
            cache.add_sequence(s, rng.integers(0, 30000, context + s % BLOCK))
            cache.mark_computed(s, context + s % BLOCK)
        caches[name] = cache
    cache0 = caches["with"]
    q = rng.standard_normal((sequences, 32, LLAMA3_8B["head_dim"]), dtype=np.float32)
    seq_ids = np.arange(sequences)
    times = {"with": [], "without": []}
    for step in range(steps):
        for name in (("with", "without") if step % 2 == 0 else ("without", "with")):
            cache = caches[name]
            token = rng.integers(0, 30000, sequences)
            start = time.perf_counter()
            cache.append_batch(seq_ids, token)
            cache.batch_metadata(seq_ids)
            fkv.paged_attention_decode(q, cache, 0, seq_ids)
            times[name].append(time.perf_counter() - start)
    cache0.flush_tiers()
    written = cache0.stats()["tiers"][f"disk:{tier_dir}"]["blocks_written"]
    return float(np.median(times["with"])), float(np.median(times["without"])), written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        sys.exit("bench_tiers needs redis-server (apt-get install redis-server)")
    prompt = np.arange(args.tokens, dtype=np.int32) % 30000
    title = (f"storage tiers, Llama-3-8B geometry (bfloat16, block {BLOCK}), "
             f"{args.tokens}-token prompt")
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            gflops = matmul_gflops()
            disk_dir = os.path.join(tmp, "disk")
            writer = fkv.PagedKvCache(config(args.tokens), tiers=[DiskTier(disk_dir),
                                                                  RedisTier(url)],
                                      model_id="llama-3-8b", tier_queue_blocks=4096)
            fill_and_publish(writer, prompt)
            del writer
            nbytes = None
            for name, tier in (("disk (warm page cache)", DiskTier(disk_dir)),
                               ("redis (loopback)", RedisTier(url))):
                replica = fkv.PagedKvCache(config(args.tokens), tiers=[tier],
                                           model_id="llama-3-8b")
                seconds, nbytes = restore_seconds(replica, prompt, args.repeat)
                rows.append({"case": f"restore from {name}", "GB": f"{nbytes / 1e9:.2f}",
                             "seconds": f"{seconds:.3f}", "GB/s": f"{nbytes / seconds / 1e9:.2f}"})
                if name.startswith("redis"):
                    redis_seconds = seconds
                    keys = [replica._tiers._slots[0].key(h) for h in
                            fkv.block_hashes(prompt, BLOCK)[:nbytes // replica.config.bytes_per_block]]
                del replica
            copy = memcpy_seconds(nbytes, args.repeat)
            rows.append({"case": "memcpy (numpy.copyto)", "GB": f"{nbytes / 1e9:.2f}",
                         "seconds": f"{copy:.3f}", "GB/s": f"{nbytes / copy / 1e9:.2f}"})
            get_loop = redis_get_loop_seconds(url, keys, args.repeat)
            rows.append({"case": "bare redis-py GET loop", "GB": f"{nbytes / 1e9:.2f}",
                         "seconds": f"{get_loop:.3f}", "GB/s": f"{nbytes / get_loop / 1e9:.2f}"})
            recompute = 2 * LLAMA3_8B_PARAMETERS * args.tokens / (gflops * 1e9)
            notes.append(f"redis restore / bare GET loop: {get_loop / redis_seconds:.2f} of its "
                         f"throughput")
            notes.append(f"second replica: restore {redis_seconds:.2f} s vs estimated recompute "
                         f"{recompute:.1f} s (2 x {LLAMA3_8B_PARAMETERS:.2e} x {args.tokens} "
                         f"FLOPs at {gflops:.0f} GFLOP/s float32 matmul): "
                         f"{recompute / redis_seconds:.0f}x faster")
            if args.decode_steps == 0:  # restore figures only
                return report(Result(title, rows, notes), args.json)
            with_tier, without, written = decode_steps(os.path.join(tmp, "decode"), 256, 256,
                                                       args.decode_steps)
            rows.append({"case": "decode step, 256 seqs, with disk tier", "GB": "",
                         "seconds": f"{with_tier * 1e3:.3f} ms", "GB/s": ""})
            rows.append({"case": "decode step, 256 seqs, no tier", "GB": "",
                         "seconds": f"{without * 1e3:.3f} ms", "GB/s": ""})
            notes.append(f"background writes: decode step x{with_tier / without:.3f} "
                         f"({written} blocks written during {args.decode_steps} steps; medians, "
                         f"A/B interleaved)")
        finally:
            proc.terminate()
            proc.wait()
    report(Result(title, rows, notes), args.json)


if __name__ == "__main__":
    main()
