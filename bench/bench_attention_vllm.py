"""vLLM's CPU paged-attention op (torch.ops._C.cpu_attention_with_kv_cache) as a peer of
bench_attention.py. Optional: vLLM is never a dependency; where it is not importable this script
says so and exits 0.

    python bench/bench_attention_vllm.py

Status: only the import check is written. The side-by-side run (cache written through
cpu_attn_reshape_and_cache, metadata from cpu_attn_get_scheduler_metadata, the call order of
vllm/v1/attention/backends/cpu_attn.py; see shared/peers.md) is still to do.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        print(f"vLLM is not importable here ({error}); skipping the vLLM attention comparison.")
        return 0
    print("vLLM is importable, but the vLLM attention comparison is not implemented yet "
          "(see this script's docstring); nothing measured.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
