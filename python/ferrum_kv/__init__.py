"""ferrum-kv: a KV-cache manager for LLM inference (block pool, paged KV storage, sequence manager).

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
)

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
]
