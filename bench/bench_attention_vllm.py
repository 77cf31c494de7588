"""Paged-attention decode: ferrum_kv's CPU kernel against vLLM's CPU paged-attention op
(torch.ops._C.cpu_attention_with_kv_cache), side by side in one process, on the same K/V values.
Optional: vLLM is never a dependency; where it is not importable this script says so and exits 0.

    OPENBLAS_NUM_THREADS=1 python bench/bench_attention_vllm.py [--preset quick|full]
        [--threads 1,2] [--vllm-block-sizes 16,128] [--json FILE]

Geometry as in bench_attention.py: Llama-3-8B-like decode layer (32 query heads, 8 KV heads,
head_dim 128), ferrum_kv block size 16, blocks of each sequence shuffled. vLLM is run through the
same calls as vllm/v1/attention/backends/cpu_attn.py: the per-layer cache
[num_blocks, num_kv_heads, block_size, 2 * head_dim] is viewed as
[num_blocks, num_kv_heads, 2 * block_size, head_dim] and chunked into key/value caches, written
with cpu_attn_reshape_and_cache (the kernel's own in-block layout), and read by
cpu_attention_with_kv_cache with metadata from cpu_attn_get_scheduler_metadata (built once per
batch, outside the timing, as vLLM builds it once per step for all layers; KV split as vLLM's
default VLLM_CPU_ATTN_SPLIT_KV). The ISA is chosen by vLLM's own _get_attn_isa: block 16 runs
its `vec16` kernel on the same block table as ours; block 128 (vLLM's CPU default block size,
`vec` kernel; `amx` on AMX machines for bfloat16) has its own shuffled block table over the same
token values.

Every layer of the ferrum_kv cache is copied token by token into the matching vLLM layer, so both
read identical K/V; the query is identical too (rounded to bfloat16 for the bfloat16 cases, where
vLLM's query is bfloat16). Each implementation rotates over ~768 MB of layers, so no call finds
its K/V in the caches; the implementations are timed in interleaved rounds (best of the rounds),
with the same thread count (torch.set_num_threads for vLLM, num_threads for ferrum_kv). The read
ceiling is ferrum_kv._core.memory_read_probe's threads-thread sum over 1 GiB, best of 5, measured
in this run. vLLM's op runs on torch's OpenMP threads, ferrum_kv's kernels on their own (see
docs/attention.md). On a 2-core shared machine the 2-thread rows are only meaningful when nothing
else runs: one preempted thread stalls every call of either.

The full preset with --threads 1,2 takes about 5 minutes on 2 cores and peaks near 7 GB of RAM.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

PRESETS = {
    "quick": dict(contexts=[1024, 4096], batches=[1, 8]),
    "full": dict(contexts=[1024, 4096, 16384], batches=[1, 8, 32]),
}


def _import_vllm():
    """(torch, ops module, _get_attn_isa, envs) or a reason string."""
    try:
        import torch
        from vllm.platforms import current_platform

        current_platform.import_kernels()
        from vllm import _custom_ops as ops
        from vllm import envs
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        torch.ops._C.cpu_attention_with_kv_cache  # noqa: B018  (raises if the op is missing)
    except Exception as error:  # ImportError, or a build without the CPU ops
        return f"{type(error).__name__}: {error}"
    return torch, ops, _get_attn_isa, envs


def _timed_rounds(fns: dict, rounds: int = 7, min_time: float = 0.05) -> dict:
    """Best seconds per call of each fn, timed in interleaved rounds (noisy shared machine)."""
    loops = {}
    for name, fn in fns.items():  # calibrate each (also warms it up)
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            if time.perf_counter() - start >= min_time:
                break
            n *= 2
        loops[name] = n
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / loops[name])
    return best


def _rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Relative L2 error ||ours - theirs|| / ||ours||."""
    diff = ours.astype(np.float64) - theirs.astype(np.float64)
    return float(np.linalg.norm(diff) / np.linalg.norm(ours))


class VllmCaches:
    """Per-layer vLLM caches of one block size holding the same tokens as a PagedSetup."""

    def __init__(self, torch, ops, isa_fn, setup, dtype: str, batch: int, context: int,
                 block_size: int, num_kv_heads: int, head_dim: int, seed: int):
        self.torch, self.ops = torch, ops
        self.torch_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
        self.block_size = block_size
        self.isa = isa_fn(self.torch_dtype, block_size, head_dim, "auto")
        blocks_per_seq = -(-context // block_size)
        num_blocks = batch * blocks_per_seq
        rng = np.random.default_rng(seed)
        self.block_table = torch.from_numpy(
            rng.permutation(num_blocks).astype(np.int32).reshape(batch, blocks_per_seq))
        self.layers = []  # (key_cache, value_cache) views of each layer's cache
        positions = torch.arange(context, dtype=torch.int64)
        for layer in range(setup.num_layers):
            kv_cache = torch.zeros(num_blocks, num_kv_heads, block_size, 2 * head_dim,
                                   dtype=self.torch_dtype)
            # As CPUAttentionBackendImpl.do_kv_cache_update: view and chunk, then write.
            key_cache, value_cache = kv_cache.view(
                num_blocks, num_kv_heads, 2 * block_size, head_dim).chunk(2, dim=2)
            keys, values = setup.storage.key_cache(layer), setup.storage.value_cache(layer)
            for i in range(batch):
                ids = setup.block_tables[i]
                # ferrum [blocks, kv_heads, block, dim] -> tokens [context, kv_heads, dim]
                k = self._tokens(keys[ids], context)
                v = self._tokens(values[ids], context)
                slots = (self.block_table[i].to(torch.int64)[positions // block_size]
                         * block_size + positions % block_size)
                ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, self.isa)
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
            causal=True, sliding_window_size=-1, isa=self.isa, enable_kv_split=split_kv)

    def call(self, layer=None):
        key_cache, value_cache = next(self.cycle) if layer is None else self.layers[layer]
        self.ops.cpu_attention_with_kv_cache(
            query=self.query, key_cache=key_cache, value_cache=value_cache, output=self.output,
            query_start_loc=self.query_start_loc, seq_lens=self.seq_lens, scale=self.scale,
            causal=True, alibi_slopes=None, sliding_window=-1, block_table=self.block_table,
            softcap=0.0, scheduler_metadata=self.metadata, s_aux=None)
        return self.output


def bench_case(vllm, dtype: str, batch: int, context: int, threads_list: list[int],
               ceilings: dict, block_sizes: list[int]) -> list[dict] | None:
    torch, ops, isa_fn, envs = vllm
    import ferrum_kv._core as core
    from ferrum_kv.benchmarks import attention as fa

    heads, kv_heads, head_dim = fa.NUM_Q_HEADS, fa.NUM_KV_HEADS, fa.HEAD_DIM
    kv_bytes = 2 * batch * context * kv_heads * fa.token_bytes(dtype)
    if kv_bytes > fa.MAX_CALL_BYTES:
        return None
    setup = fa.PagedSetup(dtype, batch, context)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((batch, heads, head_dim), dtype=np.float32)
    torch_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
    tq = torch.from_numpy(q).to(torch_dtype)
    q = tq.to(torch.float32).numpy().copy()  # the same (rounded) query for both
    out = np.empty_like(q)
    seq_lens = torch.from_numpy(setup.context_lens.copy())
    peers = {bs: VllmCaches(torch, ops, isa_fn, setup, dtype, batch, context, bs, kv_heads,
                            head_dim, seed=3 + bs) for bs in block_sizes}

    def ours(layer=None, threads=1):
        return core.paged_attention_decode_tables(
            q, setup.storage, next(setup.layers) if layer is None else layer,
            setup.block_tables, setup.context_lens, out=out, num_threads=threads)

    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for peer in peers.values():
            peer.prepare(tq, seq_lens, heads, kv_heads, head_dim, envs.VLLM_CPU_ATTN_SPLIT_KV)
        row = {"threads": threads, "dtype": dtype, "batch": batch, "context": context,
               "kv_MB": f"{kv_bytes / 1e6:.0f}"}
        with torch.inference_mode():
            # Agreement on layer 0: ours against each vLLM block size (bfloat16 output there).
            expected = ours(0, threads).copy()
            errors = {bs: _rel_err(expected, peer.call(0).to(torch.float32).numpy())
                      for bs, peer in peers.items()}
            fns = {"ours": lambda: ours(None, threads)}
            fns.update({f"vllm{bs}": peer.call for bs, peer in peers.items()})
            times = _timed_rounds(fns)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts, e.g. 1,2 (same for both)")
    parser.add_argument("--vllm-block-sizes", default="16,128",
                        help="vLLM cache block sizes to run (16: vec16 on our block table; "
                             "multiples of 32: vec)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    vllm = _import_vllm()
    if isinstance(vllm, str):
        print(f"vLLM is not importable here ({vllm}); skipping the vLLM attention comparison.")
        return 0
    try:
        import ferrum_kv._core as core
        from ferrum_kv.benchmarks import attention as fa
        from ferrum_kv.benchmarks.common import Result, machine, write_json
    except ImportError as error:
        print(f"ferrum_kv (with ferrum_kv.benchmarks.attention) is not importable ({error}); "
              "install it in this environment first.")
        return 1
    torch = vllm[0]
    import vllm as vllm_module

    threads_list = [int(x) for x in args.threads.split(",")]
    block_sizes = [int(x) for x in args.vllm_block_sizes.split(",")]
    print(f"machine: {machine()}")
    ceilings = {t: fa.read_bandwidth(t) for t in threads_list}
    sizes = PRESETS[args.preset]
    rows, notes = [], []
    for dtype in ("float32", "bfloat16"):
        for context, batch in itertools.product(sizes["contexts"], sizes["batches"]):
            case = bench_case(vllm, dtype, batch, context, threads_list, ceilings, block_sizes)
            if case is None:
                notes.append(f"skipped {dtype} batch {batch} context {context}: K/V over "
                             f"{fa.MAX_CALL_BYTES >> 20} MiB per call")
                continue
            for row in case:
                print(row, flush=True)
            rows.extend(case)
    rows.sort(key=lambda r: r["threads"])
    ceiling_text = ", ".join(f"{t} thread(s) {c / 1e9:.1f} GB/s" for t, c in ceilings.items())
    notes[:0] = [
        f"ferrum_kv kernel {core.attention_isas()[0]} (block 16); vLLM {vllm_module.__version__} "
        f"cpu_attention_with_kv_cache, isa per block size in the isa column; torch "
        f"{torch.__version__}",
        f"read ceiling (sum over 1 GiB, best of 5, this run): {ceiling_text}; % = K/V bytes "
        "read per call / time / ceiling",
        "ours/vllmN = vLLM ms / ours ms (>1: ours faster); relerrN = ||ours - vLLM|| / ||ours|| "
        "on layer 0 (vLLM's output is bfloat16 in the bfloat16 cases)",
    ]
    result = Result("Paged attention decode, ferrum_kv vs vLLM CPU op (32 q heads, 8 KV heads, "
                    "head_dim 128)", rows, notes)
    result.print()
    write_json(args.json, {"machine": machine(), "threads": threads_list,
                           **result.as_json()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
