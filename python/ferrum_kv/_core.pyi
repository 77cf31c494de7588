"""
ferrum-kv C++ core: block pool, paged KV storage, cache manager, kernels, prefix hashes.
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['BatchMetadata', 'BlockPool', 'CacheConfig', 'Error', 'InvalidStateError', 'InvariantError', 'KvStorage', 'OutOfBlocksError', 'PagedKvCache', 'block_hashes', 'sha256_impl']
class Error(RuntimeError):
    """
    Base class of ferrum-kv's domain errors (a RuntimeError).
    """
class OutOfBlocksError(Error):
    """
    Not enough free blocks; the call changed nothing.
    """
class InvalidStateError(Error):
    """
    The operation is not valid in the sequence's current state (e.g. swapped out).
    """
class InvariantError(Error):
    """
    An internal invariant is broken (a bug in ferrum-kv).
    """
class CacheConfig:
    """
    Geometry of a paged KV cache (immutable). A block holds block_size tokens of K and V for every layer and KV head.
    """
    def __init__(self, *, num_layers: typing.SupportsInt | typing.SupportsIndex, num_kv_heads: typing.SupportsInt | typing.SupportsIndex, head_dim: typing.SupportsInt | typing.SupportsIndex, block_size: typing.SupportsInt | typing.SupportsIndex, num_blocks: typing.SupportsInt | typing.SupportsIndex, dtype: str = 'float32', num_host_blocks: typing.SupportsInt | typing.SupportsIndex = 0, enable_prefix_caching: bool = False, high_watermark: typing.SupportsFloat | typing.SupportsIndex = 0.1, critical_watermark: typing.SupportsFloat | typing.SupportsIndex = 0.02) -> None:
        ...
    def __repr__(self) -> str:
        ...
    @property
    def block_size(self) -> int:
        ...
    @property
    def bytes_per_block(self) -> int:
        """
        Bytes of one block: K and V, all layers.
        """
    @property
    def bytes_per_token(self) -> int:
        """
        Bytes of one token's K and V over all layers.
        """
    @property
    def critical_watermark(self) -> float:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def enable_prefix_caching(self) -> bool:
        ...
    @property
    def head_dim(self) -> int:
        ...
    @property
    def high_watermark(self) -> float:
        ...
    @property
    def num_blocks(self) -> int:
        ...
    @property
    def num_host_blocks(self) -> int:
        ...
    @property
    def num_kv_heads(self) -> int:
        ...
    @property
    def num_layers(self) -> int:
        ...
class BlockPool:
    """
    Fixed set of block ids [0, num_blocks) with a ref count each. Thread-safe; every call is all-or-nothing. The least recently freed block is reused first.
    """
    def __init__(self, *, num_blocks: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __len__(self) -> int:
        ...
    def __repr__(self) -> str:
        ...
    def allocate(self, n: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.int32]:
        """
        Allocate n blocks (ref count 1). Returns int32 array of shape (n,). Raises OutOfBlocksError (nothing allocated) when fewer than n are free.
        """
    def can_allocate(self, n: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def check_invariants(self) -> None:
        """
        Raise InvariantError if an internal invariant is broken.
        """
    def free(self, ids: typing.Any) -> None:
        """
        Drop one reference from each id (1-D integer array); a block returns to the free list at ref count 0. The whole batch is validated first: IndexError for an id out of range, ValueError for a double free; nothing changes on error.
        """
    def incref(self, ids: typing.Any) -> None:
        """
        Add one reference to each id (all must be allocated; ValueError otherwise, nothing changed).
        """
    def ref_count(self, block_id: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    def stats(self) -> dict:
        """
        Counters over the pool's life, as a dict of ints.
        """
    @property
    def num_blocks(self) -> int:
        ...
    @property
    def num_free_blocks(self) -> int:
        ...
    @property
    def num_used_blocks(self) -> int:
        ...
class KvStorage:
    """
    K/V bytes of a pool of blocks in one 64-byte-aligned arena, block-major: [num_blocks, num_layers, 2 (K, V), num_kv_heads, block_size, head_dim]. Views are zero-copy and keep the arena alive; bfloat16 storage is viewed as uint16 bits.
    """
    def __init__(self, config: CacheConfig) -> None:
        ...
    def __repr__(self) -> str:
        ...
    def array(self) -> numpy.ndarray:
        """
        Zero-copy view [num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim].
        """
    def key_cache(self, layer: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
        """
        Zero-copy strided view of layer's keys: [num_blocks, num_kv_heads, block_size, head_dim].
        """
    def read_slot(self, block_id: typing.SupportsInt | typing.SupportsIndex, layer: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex) -> tuple[numpy.ndarray, numpy.ndarray]:
        """
        Copies of one token's (K, V), each [num_kv_heads, head_dim] in the storage dtype.
        """
    def value_cache(self, layer: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
        """
        Like key_cache, for values.
        """
    def write_slot(self, block_id: typing.SupportsInt | typing.SupportsIndex, layer: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex, k: numpy.ndarray, v: numpy.ndarray) -> None:
        """
        Write one token's K and V ([num_kv_heads, head_dim] each, float32 or the storage dtype; float32 is rounded to nearest even) under the block's lock.
        """
    @property
    def bytes_per_block(self) -> int:
        ...
    @property
    def config(self) -> CacheConfig:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def num_blocks(self) -> int:
        ...
class BatchMetadata:
    """
    Per-step arrays for attention kernels, all int32: block_tables [B, max_blocks] (padding -1), context_lens [B], CSR indptr [B+1], indices [nnz], last_block_len [B] (in (0, block_size]), slot_mapping [B] (slot of each sequence's last token).
    """
    @property
    def block_tables(self) -> numpy.ndarray:
        ...
    @property
    def context_lens(self) -> numpy.ndarray:
        ...
    @property
    def indices(self) -> numpy.ndarray:
        ...
    @property
    def indptr(self) -> numpy.ndarray:
        ...
    @property
    def last_block_len(self) -> numpy.ndarray:
        ...
    @property
    def slot_mapping(self) -> numpy.ndarray:
        ...
class PagedKvCache:
    """
    Sequences, block tables, copy-on-write fork, swap to the host tier and batch metadata over one BlockPool + KvStorage. Thread-safe; every call is all-or-nothing.
    """
    def __contains__(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def __init__(self, config: CacheConfig) -> None:
        ...
    def __len__(self) -> int:
        ...
    def add_sequence(self, seq_id: typing.SupportsInt | typing.SupportsIndex, tokens: typing.Any) -> int:
        """
        Create seq_id holding tokens (1-D int array, >= 1 token) and allocate their blocks. Returns the number of leading tokens already cached (0 without prefix caching).
        """
    def append_batch(self, seq_ids: typing.Any, tokens: typing.Any) -> None:
        """
        One decode step: append tokens[i] to seq_ids[i] (distinct ids). All-or-nothing.
        """
    def append_tokens(self, seq_id: typing.SupportsInt | typing.SupportsIndex, tokens: typing.Any) -> None:
        ...
    def batch_metadata(self, seq_ids: typing.Any) -> BatchMetadata:
        """
        BatchMetadata for resident sequences (new int32 arrays).
        """
    def block_table(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
        """
        The sequence's block ids (int32 copy; host-tier ids while swapped out).
        """
    def can_allocate(self, num_tokens: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def can_append(self, seq_id: typing.SupportsInt | typing.SupportsIndex, num_tokens: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def check_invariants(self) -> None:
        ...
    def fork(self, parent_id: typing.SupportsInt | typing.SupportsIndex, child_id: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        child shares every block of parent; the first append into a shared, partly filled block copies it first.
        """
    def free_sequence(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def gather_kv(self, seq_id: typing.SupportsInt | typing.SupportsIndex, layer: typing.SupportsInt | typing.SupportsIndex) -> tuple[numpy.ndarray, numpy.ndarray]:
        """
        Contiguous copies (K, V), each [num_tokens, num_kv_heads, head_dim] in the storage dtype, in token order, from whichever tier holds the sequence.
        """
    def is_swapped(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> bool:
        ...
    def mark_computed(self, seq_id: typing.SupportsInt | typing.SupportsIndex, num_tokens: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def num_tokens(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    def set_pressure_callback(self, callback: typing.Any) -> None:
        """
        callback(level: str) runs (with the GIL, outside the cache's lock) whenever a call changes memory_pressure; None removes it. Exceptions it raises are reported as unraisable, never propagated.
        """
    def slot_mapping(self, seq_id: typing.SupportsInt | typing.SupportsIndex, start: typing.SupportsInt | typing.SupportsIndex, end: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
        """
        int32 slots (block_id * block_size + offset) of token positions [start, end).
        """
    def stats(self) -> dict:
        """
        Counters as a dict of ints.
        """
    def swap_in(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        Copy the sequence back into fresh device blocks (its block ids may change).
        """
    def swap_out(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        Copy the sequence's blocks to the host tier and free its device blocks.
        """
    def tokens(self, seq_id: typing.SupportsInt | typing.SupportsIndex) -> numpy.ndarray:
        """
        The sequence's token ids (int32 copy).
        """
    def write_kv(self, layer: typing.SupportsInt | typing.SupportsIndex, slots: typing.Any, k: numpy.ndarray, v: numpy.ndarray) -> None:
        """
        Scatter K/V ([n, num_kv_heads, head_dim] each; float32 or the storage dtype) into slots ([n] int32); slot -1 is skipped. Every slot is validated before any write.
        """
    @property
    def config(self) -> CacheConfig:
        ...
    @property
    def host_storage(self) -> KvStorage:
        """
        The host-tier KvStorage, or None without one.
        """
    @property
    def memory_pressure(self) -> str:
        """
        'low' | 'high' | 'critical' by the free-block watermarks of the config.
        """
    @property
    def storage(self) -> KvStorage:
        """
        The device-tier KvStorage.
        """
def block_hashes(tokens: typing.Any, block_size: typing.SupportsInt | typing.SupportsIndex, namespace: bytes = b'') -> list[bytes]:
    """
    Prefix hashes of the full blocks of tokens (1-D array of non-negative int32 token ids): a list of 32-byte digests, one per full block (a partial trailing block is ignored). parent_0 = SHA-256(b'ferrum-kv/v1' + namespace); block i hashes to h_i = SHA-256(parent || its token ids as little-endian uint32), and parent = h_i. ValueError for a negative token, a non-integer array or block_size < 1; TypeError when namespace is not bytes.
    """
def sha256_impl() -> str:
    """
    Which SHA-256 implementation this process runs: 'sha-ni' or 'portable'.
    """
__version__: str = '0.1.0'
