"""ferrum-kv: a KV-cache manager for LLM inference (block pool, paged KV storage, sequence manager,
prefix caching, CPU paged attention).

The core is C++ (``ferrum_kv._core``); this package re-exports its public names: the cache, its
errors, prefix hashes, and the attention kernels both over a cache (``paged_attention_decode``,
``paged_attention_prefill``) and over explicit block tables (the ``_tables`` variants, with
``attention_isas()`` naming the kernel variants this CPU runs and ``attention_fast_isas(dtype)``
those with a low-precision "fast" kernel for a storage dtype), and the quantized formats' row
codecs (``quantize_rows`` / ``dequantize_rows``: the write and read paths of int8 / fp8 / int4
storage; ``ferrum_kv.reference.quantize`` is their NumPy definition). ``_core.memory_read_probe`` is
left out: it measures the machine's read bandwidth for the benchmarks' GB/s ceiling and is no part
of serving (``ferrum_kv.benchmarks`` uses it from ``_core``).
"""

from ferrum_kv._core import (
    BatchMetadata,
    BlockPool,
    CacheConfig,
    Error,
    InvalidStateError,
    InvariantError,
    KvStorage,
    OutOfBlocksError,
    __version__,
    attention_fast_isas,
    attention_isas,
    block_hashes,
    dequantize_rows,
    get_num_threads,
    paged_attention_decode_tables,
    paged_attention_prefill_tables,
    quantize_rows,
    set_num_threads,
)
from ferrum_kv.attention import paged_attention_decode, paged_attention_prefill
from ferrum_kv.cache import PagedKvCache

__all__ = [
    "BatchMetadata",
    "BlockPool",
    "CacheConfig",
    "Error",
    "InvalidStateError",
    "InvariantError",
    "KvStorage",
    "OutOfBlocksError",
    "PagedKvCache",
    "__version__",
    "attention_fast_isas",
    "attention_isas",
    "block_hashes",
    "dequantize_rows",
    "get_num_threads",
    "paged_attention_decode",
    "paged_attention_decode_tables",
    "paged_attention_prefill",
    "paged_attention_prefill_tables",
    "quantize_rows",
    "set_num_threads",
]
