"""ferrum-kv: a KV-cache manager for LLM inference (block pool, paged KV storage, sequence manager,
prefix caching, CPU paged attention).

The core is C++ (``ferrum_kv._core``); this package re-exports its public names.
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
    PagedKvCache,
    __version__,
    block_hashes,
    get_num_threads,
    set_num_threads,
)
from ferrum_kv.attention import paged_attention_decode, paged_attention_prefill

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
    "block_hashes",
    "get_num_threads",
    "paged_attention_decode",
    "paged_attention_prefill",
    "set_num_threads",
]
