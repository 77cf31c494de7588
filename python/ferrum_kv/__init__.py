"""ferrum-kv: a KV-cache manager for LLM inference (block pool, paged KV storage).

The core is C++ (``ferrum_kv._core``); this package re-exports its public names.
"""

from ferrum_kv._core import (
    BlockPool,
    CacheConfig,
    Error,
    InvariantError,
    KvStorage,
    OutOfBlocksError,
    __version__,
)

__all__ = [
    "BlockPool",
    "CacheConfig",
    "Error",
    "InvariantError",
    "KvStorage",
    "OutOfBlocksError",
    "__version__",
]
