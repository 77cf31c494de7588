"""Paged-attention decode: ferrum_kv's CPU kernels against vLLM's CPU paged-attention op
(torch.ops._C.cpu_attention_with_kv_cache), side by side in one process, on the same K/V values,
in float32 / bfloat16 and in fp8 (vLLM's kv_cache_dtype fp8_e4m3 / fp8_e5m2 against our fp8
storage), with the output error of each fp8 cache against float64 on the unquantized values.
Optional: vLLM is never a dependency; where it is not importable this script says so and exits 0.

    OPENBLAS_NUM_THREADS=1 python bench/bench_attention_vllm.py [--preset quick|full]
        [--threads 1,2] [--parts float,fp8,accuracy] [--vllm-block-sizes 16,128]
        [--vllm-fp8-block-size 128] [--vllm-amx] [--timer cpu|wall] [--json FILE]

Geometry as in bench_attention.py: Llama-3-8B-like decode layer (32 query heads, 8 KV heads,
head_dim 128), ferrum_kv block size 16, blocks of each sequence shuffled. vLLM is run through the
same calls as vllm/v1/attention/backends/cpu_attn.py (see bench/vllm_cpu_attn.py): caches
written with cpu_attn_reshape_and_cache (the kernel's own in-block layout), read by
cpu_attention_with_kv_cache with metadata from cpu_attn_get_scheduler_metadata (built once per
batch, outside the timing, as vLLM builds it once per step for all layers; KV split as vLLM's
default VLLM_CPU_ATTN_SPLIT_KV). The ISA is vLLM's own _get_attn_isa ("amx" replaced by "vec"
unless --vllm-amx): block 16 runs its `vec16` kernel on the same block table as ours; block 128
(vLLM's CPU default block size, `vec` kernel) has its own shuffled block table over the same
token values.

Parts:
- float: every layer of the ferrum_kv cache is copied token by token into the matching vLLM
  layer, so both read identical K/V; the query is identical too (rounded to bfloat16 for the
  bfloat16 cases, where vLLM's query is bfloat16).
- fp8: per case, our bfloat16 storage and our fp8_e4m3 / fp8_e5m2 storage (N(0, 1) rows quantized
  on write, precisions "exact" and "fast"), and vLLM's bf16 cache and its two fp8 caches (our
  bfloat16 values written through its fp8 reshape_and_cache, per-tensor scale 1.0, its
  default), at --vllm-fp8-block-size (vLLM's fp8 needs its `vec`/`amx` kernels: a multiple of
  32), all timed in the same interleaved rounds; each row gives both speed-ups over the same
  implementation's bfloat16 and their ratio (issue 13 asks ours >= 2x vLLM's).
- accuracy: the quantization budget's data of tests/python/test_quantized.py (4096 tokens,
  N(0, 1) K/V, seed 0) through each implementation's fp8 write and decode kernel, against
  float64 attention over the unquantized values; and the mean-magnitude change of what each
  cache stores (a truncating quantizer shrinks it).

Each implementation rotates over ~768 MB of layers, so no call finds its K/V in the caches; the
implementations are timed in interleaved rounds (best of the rounds), with the same thread count
(torch.set_num_threads for vLLM, num_threads for ferrum_kv); 1-thread rows by the calling
thread's CPU time (--timer cpu, the default: both run on the calling thread, and time slices
lost to other processes do not count), the others by wall time. The read ceiling is
ferrum_kv._core.memory_read_probe's threads-thread sum over 1 GiB, best of 5, measured in this
run. vLLM's op runs on torch's OpenMP threads, ferrum_kv's kernels on their own (see
docs/attention.md). On a 2-core shared machine the 2-thread rows are only meaningful when nothing
else runs: one preempted thread stalls every call of either.

The quick preset with --threads 1,2 took 8 minutes on 2 busy cores (load average 3-9), about 4
for each of the float and fp8 parts (mostly filling our bfloat16 setups with random values), 20 s
for the accuracy part. The float part of the full preset with --threads 1,2 takes about 5 minutes
on 2 quiet cores and peaks near 7 GB of RAM; its fp8 part (six rotations per case) took 14
minutes with --threads 1 on the busy cores and peaked at 9.2 GB (16K context, batch 8).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import vllm_cpu_attn as va  # noqa: E402  (bench/, next to this script)

PARTS = ("float", "fp8", "accuracy")
PRESETS = {
    "quick": dict(contexts=[1024, 4096], batches=[1, 8]),
    "full": dict(contexts=[1024, 4096, 16384], batches=[1, 8, 32]),
}


def _rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Relative L2 error ||ours - theirs|| / ||ours||."""
    diff = ours.astype(np.float64) - theirs.astype(np.float64)
    return float(np.linalg.norm(diff) / np.linalg.norm(ours))


class VllmCaches:
    """Per-layer vLLM caches of one block size and kv_cache_dtype holding the same tokens as a
    bfloat16 or float32 PagedSetup (fp8 caches quantize them on write, per-tensor scale 1.0)."""

    def __init__(self, torch, ops, isa_fn, setup, dtype: str, batch: int, context: int,
                 block_size: int, num_kv_heads: int, head_dim: int, seed: int,
                 kv_cache_dtype: str = "auto", allow_amx: bool = False):
        self.torch, self.ops = torch, ops
        self.torch_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
        self.kv_cache_dtype = kv_cache_dtype
        self.block_size = block_size
        self.isa = va.attn_isa(isa_fn, self.torch_dtype, block_size, head_dim, kv_cache_dtype,
                               allow_amx)
        blocks_per_seq = -(-context // block_size)
        num_blocks = batch * blocks_per_seq
        rng = np.random.default_rng(seed)
        self.block_table = torch.from_numpy(
            rng.permutation(num_blocks).astype(np.int32).reshape(batch, blocks_per_seq))
        self.layers = []  # (key_cache, value_cache) views of each layer's cache
        positions = torch.arange(context, dtype=torch.int64)
        for layer in range(setup.num_layers):
            key_cache, value_cache = va.new_cache(torch, num_blocks, num_kv_heads, block_size,
                                                  head_dim, self.torch_dtype, kv_cache_dtype)
            keys, values = setup.storage.key_cache(layer), setup.storage.value_cache(layer)
            for i in range(batch):
                ids = setup.block_tables[i]
                # ferrum [blocks, kv_heads, block, dim] -> tokens [context, kv_heads, dim]
                k = self._tokens(keys[ids], context)
                v = self._tokens(values[ids], context)
                slots = (self.block_table[i].to(torch.int64)[positions // block_size]
                         * block_size + positions % block_size)
                ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, self.isa,
                                               kv_cache_dtype=kv_cache_dtype)
            self.layers.append((key_cache, value_cache))
        self.cycle = itertools.cycle(self.layers)

    def _tokens(self, blocks: np.ndarray, context: int):
        torch = self.torch
        tokens = np.ascontiguousarray(blocks.transpose(0, 2, 1, 3)).reshape(
            -1, blocks.shape[1], blocks.shape[3])[:context]
        if self.torch_dtype == torch.bfloat16:  # ferrum views bfloat16 as uint16 bits
            return torch.from_numpy(tokens.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(tokens)

    def prepare(self, query, seq_lens, num_heads: int, num_kv_heads: int, head_dim: int,
                split_kv: bool):
        """Per-step metadata (once per batch, as vLLM's metadata builder)."""
        torch = self.torch
        batch = query.shape[0]
        self.query = query
        self.output = torch.empty_like(query)
        self.query_start_loc = torch.arange(batch + 1, dtype=torch.int32)
        self.seq_lens = seq_lens
        self.scale = 1.0 / math.sqrt(head_dim)
        self.metadata = self.ops.cpu_attn_get_scheduler_metadata(
            num_reqs=batch, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            seq_lens=seq_lens, dtype=self.torch_dtype, query_start_loc=self.query_start_loc,
            causal=True, sliding_window_size=-1, isa=self.isa, enable_kv_split=split_kv,
            kv_cache_dtype=self.kv_cache_dtype)

    def call(self, layer=None):
        key_cache, value_cache = next(self.cycle) if layer is None else self.layers[layer]
        self.ops.cpu_attention_with_kv_cache(
            query=self.query, key_cache=key_cache, value_cache=value_cache, output=self.output,
            query_start_loc=self.query_start_loc, seq_lens=self.seq_lens, scale=self.scale,
            causal=True, alibi_slopes=None, sliding_window=-1, block_table=self.block_table,
            softcap=0.0, scheduler_metadata=self.metadata, s_aux=None,
            kv_cache_dtype=self.kv_cache_dtype)
        return self.output


def _decode_query(torch, batch: int, torch_dtype):
    """(numpy float32 query, torch query): one random query per sequence, rounded to torch_dtype
    so both implementations see the same values."""
    from ferrum_kv.benchmarks import attention as fa

    rng = np.random.default_rng(1)
    q = rng.standard_normal((batch, fa.NUM_Q_HEADS, fa.HEAD_DIM), dtype=np.float32)
    tq = torch.from_numpy(q).to(torch_dtype)
    return tq.to(torch.float32).numpy().copy(), tq


def bench_case(vllm, dtype: str, batch: int, context: int, threads_list: list[int],
               ceilings: dict, block_sizes: list[int], allow_amx: bool,
               timer: str) -> list[dict] | None:
    torch, ops, isa_fn, envs = vllm
    import ferrum_kv._core as core
    from ferrum_kv.benchmarks import attention as fa

    heads, kv_heads, head_dim = fa.NUM_Q_HEADS, fa.NUM_KV_HEADS, fa.HEAD_DIM
    kv_bytes = 2 * batch * context * kv_heads * fa.token_bytes(dtype)
    if kv_bytes > fa.MAX_CALL_BYTES:
        return None
    setup = fa.PagedSetup(dtype, batch, context)
    q, tq = _decode_query(torch, batch, torch.float32 if dtype == "float32" else torch.bfloat16)
    out = np.empty_like(q)
    seq_lens = torch.from_numpy(setup.context_lens.copy())
    peers = {bs: VllmCaches(torch, ops, isa_fn, setup, dtype, batch, context, bs, kv_heads,
                            head_dim, seed=3 + bs, allow_amx=allow_amx) for bs in block_sizes}

    def ours(layer=None, threads=1):
        return core.paged_attention_decode_tables(
            q, setup.storage, next(setup.layers) if layer is None else layer,
            setup.block_tables, setup.context_lens, out=out, num_threads=threads)

    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for peer in peers.values():
            peer.prepare(tq, seq_lens, heads, kv_heads, head_dim, envs.VLLM_CPU_ATTN_SPLIT_KV)
        row = {"threads": threads, "timer": va.timer_for(timer, threads), "dtype": dtype,
               "batch": batch, "context": context, "kv_MB": f"{kv_bytes / 1e6:.0f}"}
        with torch.inference_mode():
            # Agreement on layer 0: ours against each vLLM block size (bfloat16 output there).
            expected = ours(0, threads).copy()
            errors = {bs: _rel_err(expected, peer.call(0).to(torch.float32).numpy())
                      for bs, peer in peers.items()}
            fns = {"ours": lambda: ours(None, threads)}
            fns.update({f"vllm{bs}": peer.call for bs, peer in peers.items()})
            times = va.timed_rounds(fns, va.timer_for(timer, threads))
        ceiling = ceilings[threads]
        for name, t in times.items():
            row[f"{name}_ms"] = f"{t * 1e3:.3f}"
            row[f"{name}_GBps"] = f"{kv_bytes / t / 1e9:.1f}"
            row[f"{name}_%"] = f"{100 * kv_bytes / t / ceiling:.0f}"
        for bs in block_sizes:
            row[f"ours/vllm{bs}"] = f"{times[f'vllm{bs}'] / times['ours']:.2f}x"
        for bs in block_sizes:
            row[f"relerr{bs}"] = f"{errors[bs]:.1e}"
        row["isa"] = "/".join(peer.isa for peer in peers.values())
        rows.append(row)
    del peers, setup
    return rows


def bench_fp8_case(vllm, batch: int, context: int, threads_list: list[int], block_size: int,
                   allow_amx: bool, timer: str) -> list[dict] | None:
    """fp8 decode against bfloat16 decode, for vLLM (its fp8 cache at block_size over its bf16
    cache at block_size) and for ours (fp8 storage, "exact" and "fast", over bfloat16 "exact"),
    all timed in the same interleaved rounds. One row per (threads, fp8 format)."""
    torch, ops, isa_fn, envs = vllm
    import ferrum_kv._core as core
    from ferrum_kv.benchmarks import attention as fa

    heads, kv_heads, head_dim = fa.NUM_Q_HEADS, fa.NUM_KV_HEADS, fa.HEAD_DIM
    if 2 * batch * context * kv_heads * fa.token_bytes("bfloat16") > fa.MAX_CALL_BYTES:
        return None
    ours = {d: fa.PagedSetup(d, batch, context) for d in ("bfloat16",) + va.FP8_CACHE_DTYPES}
    q, tq = _decode_query(torch, batch, torch.bfloat16)
    out = np.empty_like(q)
    seq_lens = torch.from_numpy(ours["bfloat16"].context_lens.copy())
    # vLLM's bf16 cache and its fp8 caches, all quantized on write from our bfloat16 values.
    peers = {kvd: VllmCaches(torch, ops, isa_fn, ours["bfloat16"], "bfloat16", batch, context,
                             block_size, kv_heads, head_dim, seed=3 + block_size,
                             kv_cache_dtype=kvd, allow_amx=allow_amx)
             for kvd in ("auto",) + va.FP8_CACHE_DTYPES}

    def ours_call(dtype, precision, threads):
        setup = ours[dtype]
        return lambda: setup.decode(q, out=out, num_threads=threads, precision=precision)

    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for peer in peers.values():
            peer.prepare(tq, seq_lens, heads, kv_heads, head_dim, envs.VLLM_CPU_ATTN_SPLIT_KV)
        fns = {"ours_bf16": ours_call("bfloat16", "exact", threads),
               "vllm_bf16": peers["auto"].call}
        for fmt in va.FP8_CACHE_DTYPES:
            fns[f"ours_{fmt}_exact"] = ours_call(fmt, "exact", threads)
            fns[f"ours_{fmt}_fast"] = ours_call(fmt, "fast", threads)
            fns[f"vllm_{fmt}"] = peers[fmt].call
        with torch.inference_mode():
            t = va.timed_rounds(fns, va.timer_for(timer, threads))
        for fmt in va.FP8_CACHE_DTYPES:
            vllm_x = t["vllm_bf16"] / t[f"vllm_{fmt}"]
            row = {"threads": threads, "timer": va.timer_for(timer, threads), "format": fmt,
                   "batch": batch, "context": context,
                   "vllm_bf16_ms": f"{t['vllm_bf16'] * 1e3:.3f}",
                   "vllm_fp8_ms": f"{t[f'vllm_{fmt}'] * 1e3:.3f}",
                   "ours_bf16_ms": f"{t['ours_bf16'] * 1e3:.3f}",
                   "ours_exact_ms": f"{t[f'ours_{fmt}_exact'] * 1e3:.3f}",
                   "ours_fast_ms": f"{t[f'ours_{fmt}_fast'] * 1e3:.3f}",
                   "vllm_x": f"{vllm_x:.2f}x"}
            for precision in ("exact", "fast"):
                ours_x = t["ours_bf16"] / t[f"ours_{fmt}_{precision}"]
                row[f"ours_{precision}_x"] = f"{ours_x:.2f}x"
                row[f"{precision}_x/vllm_x"] = f"{ours_x / vllm_x:.2f}"
            for precision in ("exact", "fast"):
                row[f"{precision}_vs_vllm_fp8"] = (
                    f"{t[f'vllm_{fmt}'] / t[f'ours_{fmt}_{precision}']:.2f}x")
            row["isa"] = peers[fmt].isa
            rows.append(row)
    del peers, ours
    return rows


def _attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64 decode attention: q [n, heads, dim] over every token of k, v [tokens, kv_heads,
    dim] (GQA: query head h reads KV head h // (heads / kv_heads))."""
    n, heads, dim = q.shape
    kv_heads = k.shape[1]
    qg = q.astype(np.float64).reshape(n, kv_heads, heads // kv_heads, dim)
    s = np.einsum("nhgd,thd->nhgt", qg, k.astype(np.float64)) / math.sqrt(dim)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("nhgt,thd->nhgd", p, v.astype(np.float64)).reshape(n, heads, dim)


def accuracy_rows(vllm, block_size: int, allow_amx: bool, seed: int = 0) -> list[dict]:
    """Attention output error against float64 attention over the unquantized values, and the
    mean-magnitude change of what each cache stores, for vLLM's fp8 caches (per-tensor scale:
    vLLM's default 1.0, and absmax / fp8 max as a calibration would give) and ours (per-row
    scales), with bfloat16 storage as the floor. The budget's data (tests/python/test_quantized):
    4096 tokens of N(0, 1) K/V, 8 KV heads, head_dim 128, 4 decode queries of 32 heads."""
    torch, ops, isa_fn, _ = vllm
    import ferrum_kv as fkv
    import ferrum_kv._core as core
    from ferrum_kv import reference as ref

    rng = np.random.default_rng(seed)
    tokens, heads, kv_heads, dim, n = 4096, 32, 8, 128, 4
    k = rng.standard_normal((tokens, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((tokens, kv_heads, dim)).astype(np.float32)
    q = rng.standard_normal((n, heads, dim)).astype(np.float32)
    expected = _attention64(q, k, v)
    magnitude = np.abs(k).mean() + np.abs(v).mean()

    def row(fmt, who, scale, got, stored_magnitude):
        err = np.linalg.norm(got.astype(np.float64) - expected) / np.linalg.norm(expected)
        return {"format": fmt, "implementation": who, "scale": scale, "relerr": f"{err:.2e}",
                "mean|x| change": f"{100 * (stored_magnitude / magnitude - 1):+.2f}%"}

    rows = []
    for fmt in ("bfloat16",) + va.FP8_CACHE_DTYPES:
        config = fkv.CacheConfig(num_layers=1, num_kv_heads=kv_heads, head_dim=dim,
                                 block_size=16, num_blocks=tokens // 16, dtype=fmt)
        cache = fkv.PagedKvCache(config)
        cache.add_sequence(0, np.arange(tokens))
        cache.write_kv(0, cache.slot_mapping(0, 0, tokens), k, v)
        kq, vq = (ref.storage_to_float32(x, fmt) for x in cache.gather_kv(0, 0))
        stored = np.abs(kq).mean() + np.abs(vq).mean()
        tables = np.repeat(cache.block_table(0)[None].astype(np.int32), n, axis=0)
        lens = np.full(n, tokens, dtype=np.int32)
        for precision in ("exact", "fast"):
            got = core.paged_attention_decode_tables(q, cache.storage, 0, tables, lens,
                                                     precision=precision)
            rows.append(row(fmt, f"ferrum_kv {precision}",
                            "-" if fmt == "bfloat16" else "per row", got, stored))

    blocks = -(-tokens // block_size)
    table = torch.arange(blocks, dtype=torch.int32).repeat(n, 1)
    seq_lens = torch.full((n,), tokens, dtype=torch.int32)
    starts = torch.arange(n + 1, dtype=torch.int32)
    slots = torch.arange(tokens, dtype=torch.int64)
    scales = [("auto", 1.0, 1.0, "-")]
    for fmt in va.FP8_CACHE_DTYPES:
        scales.append((fmt, 1.0, 1.0, "1.0 (default)"))
        scales.append((fmt, float(np.abs(k).max()) / va.FP8_MAX[fmt],
                       float(np.abs(v).max()) / va.FP8_MAX[fmt], "absmax / max"))
    for kvd, k_scale, v_scale, label in scales:
        # A bf16 cache takes bf16 K/V and queries; the fp8 ones take float32 (no extra rounding).
        dtype = torch.bfloat16 if kvd == "auto" else torch.float32
        isa = va.attn_isa(isa_fn, dtype, block_size, dim, kvd, allow_amx)
        key_cache, value_cache = va.new_cache(torch, blocks, kv_heads, block_size, dim, dtype,
                                              kvd)
        tk, tv, tq = (torch.from_numpy(x).to(dtype) for x in (k, v, q))
        ops.cpu_attn_reshape_and_cache(tk, tv, key_cache, value_cache, slots, isa,
                                       k_scale=k_scale, v_scale=v_scale, kv_cache_dtype=kvd)
        metadata = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=n, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim, seq_lens=seq_lens,
            dtype=dtype, query_start_loc=starts, causal=True, sliding_window_size=-1, isa=isa,
            enable_kv_split=False, kv_cache_dtype=kvd)
        out = torch.empty_like(tq)
        with torch.inference_mode():
            ops.cpu_attention_with_kv_cache(
                query=tq, key_cache=key_cache, value_cache=value_cache, output=out,
                query_start_loc=starts, seq_lens=seq_lens, scale=1.0 / math.sqrt(dim),
                causal=True, alibi_slopes=None, sliding_window=-1, block_table=table,
                softcap=0.0, scheduler_metadata=metadata, s_aux=None, k_scale=k_scale,
                v_scale=v_scale, kv_cache_dtype=kvd)
        # Slots past the last token hold zeros: sum over the cache, divide by the tokens' count.
        stored = sum(va.cache_values(torch, c, kvd, s).abs().sum().item()
                     for c, s in ((key_cache, k_scale), (value_cache, v_scale))) / k.size
        rows.append(row("bfloat16" if kvd == "auto" else kvd, f"vLLM {isa}", label,
                        out.to(torch.float32).numpy(), stored))
    return rows


def _run_cases(cases: dict) -> tuple[list[dict], list[str]]:
    """(rows, notes): each case's rows (printed as they come), and a note for each case that
    returned None (over ferrum_kv.benchmarks.attention.MAX_CALL_BYTES of K/V per call)."""
    from ferrum_kv.benchmarks import attention as fa

    rows, notes = [], []
    for label, run_case in cases.items():
        case = run_case()
        if case is None:
            notes.append(f"skipped {label}: K/V over {fa.MAX_CALL_BYTES >> 20} MiB per call")
            continue
        for row in case:
            print(row, flush=True)
        rows.extend(case)
    return rows, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts, e.g. 1,2 (same for both)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated, from %(default)s")
    parser.add_argument("--vllm-block-sizes", default="16,128",
                        help="vLLM cache block sizes of the float part (16: vec16 on our block "
                             "table; multiples of 32: vec)")
    parser.add_argument("--vllm-fp8-block-size", type=int, default=128,
                        help="vLLM cache block size of the fp8 and accuracy parts (a multiple "
                             "of 32: vLLM's vec16 kernel has no fp8)")
    parser.add_argument("--vllm-amx", action="store_true",
                        help="let vLLM run its amx kernel where it picks it (it died with "
                             "SIGILL on the Xeon KVM guests here)")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="cpu: 1-thread rows timed by the calling thread's CPU time (see "
                             "bench/vllm_cpu_attn.py), others by wall time; wall: all by wall")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if set(parts) - set(PARTS) or args.vllm_fp8_block_size % 32:
        parser.error(f"--parts takes {PARTS}; --vllm-fp8-block-size a multiple of 32")

    vllm = va.import_both("attention")
    if isinstance(vllm, int):
        return vllm
    import ferrum_kv._core as core
    from ferrum_kv.benchmarks import attention as fa
    from ferrum_kv.benchmarks.common import Result, machine, write_json

    torch = vllm[0]
    import vllm as vllm_module

    threads_list = [int(x) for x in args.threads.split(",")]
    block_sizes = [int(x) for x in args.vllm_block_sizes.split(",")]
    print(f"machine: {machine()}; load average {os.getloadavg()}")
    ceilings = {t: fa.read_bandwidth(t) for t in threads_list} if "float" in parts else {}
    sizes = PRESETS[args.preset]
    versions = (f"ferrum_kv kernel {core.attention_isas()[0]} (block 16); vLLM "
                f"{vllm_module.__version__} cpu_attention_with_kv_cache; torch {torch.__version__}")
    results = []
    if "float" in parts:
        rows, notes = _run_cases({
            f"{dtype} batch {batch} context {context}": functools.partial(
                bench_case, vllm, dtype, batch, context, threads_list, ceilings, block_sizes,
                args.vllm_amx, args.timer)
            for dtype in ("float32", "bfloat16")
            for context, batch in itertools.product(sizes["contexts"], sizes["batches"])})
        rows.sort(key=lambda r: r["threads"])
        ceiling_text = ", ".join(f"{t} thread(s) {c / 1e9:.1f} GB/s"
                                 for t, c in ceilings.items())
        notes[:0] = [
            versions + ", isa per block size in the isa column",
            f"read ceiling (sum over 1 GiB, best of 5, wall time, this run): {ceiling_text}; % "
            "= K/V bytes read per call / time / ceiling (timer column: the call's clock)",
            "ours/vllmN = vLLM ms / ours ms (>1: ours faster); relerrN = ||ours - vLLM|| / "
            "||ours|| on layer 0 (vLLM's output is bfloat16 in the bfloat16 cases)",
        ]
        results.append(Result("Paged attention decode, ferrum_kv vs vLLM CPU op (32 q heads, "
                              "8 KV heads, head_dim 128)", rows, notes))
    if "fp8" in parts:
        rows, notes = _run_cases({
            f"fp8 batch {batch} context {context}": functools.partial(
                bench_fp8_case, vllm, batch, context, threads_list, args.vllm_fp8_block_size,
                args.vllm_amx, args.timer)
            for context, batch in itertools.product(sizes["contexts"], sizes["batches"])})
        rows.sort(key=lambda r: (r["threads"], r["format"]))
        notes[:0] = [
            versions + f"; vLLM block {args.vllm_fp8_block_size}, per-tensor scale 1.0",
            "fast kernels: " + ", ".join(f"{d} {core.attention_fast_isas(d) or '(none: exact)'}"
                                         for d in va.FP8_CACHE_DTYPES),
            "vllm_x = vLLM bf16 ms / vLLM fp8 ms; ours_P_x = our bfloat16 exact ms / our fp8 P "
            "ms; P_x/vllm_x = the ratio of the two speed-ups (issue 13: >= 2); P_vs_vllm_fp8 = "
            "vLLM fp8 ms / our fp8 P ms (>1: ours faster)",
        ]
        results.append(Result("fp8 decode over bfloat16 decode, vLLM and ferrum_kv (same "
                              "rounds)", rows, notes))
    if "accuracy" in parts:
        rows = accuracy_rows(vllm, args.vllm_fp8_block_size, args.vllm_amx)
        results.append(Result(
            "Attention output error against float64 on the unquantized values (4096 tokens, "
            "N(0, 1) K/V, seed 0)", rows,
            ["relerr = ||out - ref|| / ||ref|| over 4 decode queries; mean|x| change = mean "
             "|stored K/V| / mean |K/V| - 1 (vLLM: its cache bytes decoded with the scale)"]))
    for result in results:
        result.print()
    write_json(args.json, {"machine": machine(), "threads": threads_list,
                           "results": [r.as_json() for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
