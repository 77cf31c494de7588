"""
ferrum-kv C++ core: block pool, paged KV storage, cache manager, kernels, prefix hashes.
"""
from __future__ import annotations
import numpy
import numpy.typing
import typing
__all__: list[str] = ['BFloat16Array', 'BatchMetadata', 'BlockPool', 'CacheConfig', 'Error', 'InvalidStateError', 'InvariantError', 'KvStorage', 'OutOfBlocksError', 'PagedKvCache', 'TierCodec', 'attention_fast_isas', 'attention_isas', 'block_hashes', 'dequantize_rows', 'get_num_threads', 'memory_read_probe', 'paged_attention_decode_tables', 'paged_attention_prefill_tables', 'quantize_rows', 'set_num_threads', 'sha256_impl']
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
class BFloat16Array(numpy.ndarray):
    """
    A numpy.ndarray of uint16 bfloat16 bits (how ferrum-kv shows bfloat16 storage and copies of it to NumPy) whose __dlpack__ exports it as DLPack bfloat16: torch.from_dlpack(a) is a torch.bfloat16 tensor over the same memory. Otherwise an ordinary ndarray.
    """
    __slots__: typing.ClassVar[tuple] = tuple()
    def __dlpack__(self: numpy.ndarray, *, stream: typing.Any = None, max_version: typing.Any = None, dl_device: typing.Any = None, copy: typing.Any = None) -> typing.Any:
        """
        Export as a DLPack capsule of bfloat16 elements (zero-copy unless copy=True): a versioned one (read-only flag where the array is not writeable) when max_version >= (1, 0), the legacy one otherwise.
        """
    def __dlpack_device__(self: numpy.ndarray) -> tuple[int, int]:
        """
        (1, 0): DLPack's CPU device.
        """
class CacheConfig:
    """
    Geometry of a paged KV cache (immutable). A block holds block_size tokens of K and V for every layer and KV head.
    """
    def __init__(self, *, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, num_blocks: int, dtype: str = 'float32', num_host_blocks: int = 0, enable_prefix_caching: bool = False, high_watermark: typing.SupportsFloat | typing.SupportsIndex = 0.1, critical_watermark: typing.SupportsFloat | typing.SupportsIndex = 0.02, eviction_policy: str = 'lru', enable_kv_events: bool = False, max_prompt_logits: int = 0) -> None:
        """
        All keyword-only. num_layers, num_kv_heads, head_dim, block_size (tokens per block), num_blocks (device tier) >= 1; dtype 'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8_e4m3' (or 'fp8') | 'fp8_e5m2' | 'int4' (quantized: docs/layout.md); num_host_blocks >= 0 (host tier for swap_out, 0: none); enable_prefix_caching; watermarks: memory_pressure is 'high' below high_watermark, 'critical' below critical_watermark (fractions of blocks free or evictable, 0 <= critical <= high <= 1); eviction_policy 'lru' | 'fifo' | 'priority_lru' | 'clock'; enable_kv_events; max_prompt_logits >= 0. Raises ValueError naming a bad value.
        """
    def __repr__(self) -> str:
        ...
    @property
    def block_size(self) -> int:
        """
        Tokens per block (int).
        """
    @property
    def bytes_per_block(self) -> int:
        """
        Bytes of one block: K and V, all layers.
        """
    @property
    def bytes_per_token(self) -> float:
        """
        Bytes of one token's K and V over all layers (float): bytes_per_block / block_size, so quantization parameters and padding included.
        """
    @property
    def critical_watermark(self) -> float:
        """
        memory_pressure is 'critical' below this fraction.
        """
    @property
    def dtype(self) -> str:
        """
        Storage dtype: 'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8_e4m3' | 'fp8_e5m2' | 'int4' ('fp8' is accepted for 'fp8_e4m3').
        """
    @property
    def enable_kv_events(self) -> bool:
        """
        Whether the cache logs prefix-cache events (PagedKvCache.drain_events).
        """
    @property
    def enable_prefix_caching(self) -> bool:
        """
        Whether computed full blocks are reused by later prompts.
        """
    @property
    def eviction_policy(self) -> str:
        """
        'lru' | 'fifo' | 'priority_lru' | 'clock': the order in which cached blocks are reclaimed.
        """
    @property
    def head_dim(self) -> int:
        """
        Elements per head (int).
        """
    @property
    def high_watermark(self) -> float:
        """
        memory_pressure is 'high' when fewer than this fraction of blocks are free or evictable.
        """
    @property
    def max_prompt_logits(self) -> int:
        """
        How many prompts' last-token logits the cache keeps for whole-prompt hits (PagedKvCache.store_logits / add_sequence_with_logits); 0: off.
        """
    @property
    def num_blocks(self) -> int:
        """
        Blocks of the device tier (int).
        """
    @property
    def num_host_blocks(self) -> int:
        """
        Blocks of the host tier (swap_out); 0: none.
        """
    @property
    def num_kv_heads(self) -> int:
        """
        K/V heads per layer (int).
        """
    @property
    def num_layers(self) -> int:
        """
        Transformer layers (int).
        """
class BlockPool:
    """
    Fixed set of block ids [0, num_blocks) with a ref count each. Thread-safe; every call is all-or-nothing. The least recently freed block is reused first.
    """
    def __init__(self, *, num_blocks: int) -> None:
        """
        A pool of num_blocks (>= 1) free blocks; ValueError otherwise.
        """
    def __len__(self) -> int:
        """
        num_blocks.
        """
    def __repr__(self) -> str:
        ...
    def allocate(self, n: int) -> numpy.typing.NDArray[numpy.int32]:
        """
        Allocate n blocks (ref count 1). Returns int32 array of shape (n,). Raises OutOfBlocksError (nothing allocated) when fewer than n are free.
        """
    def can_allocate(self, n: int) -> bool:
        """
        Whether allocate(n) would succeed now. Raises ValueError for n < 0.
        """
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
    def ref_count(self, block_id: int) -> int:
        """
        The block's ref count (0: free). Raises IndexError for an id outside [0, num_blocks).
        """
    def stats(self) -> dict:
        """
        Counters over the pool's life, as a dict of ints.
        """
    @property
    def num_blocks(self) -> int:
        """
        Blocks in the pool.
        """
    @property
    def num_free_blocks(self) -> int:
        """
        Blocks with ref count 0.
        """
    @property
    def num_used_blocks(self) -> int:
        """
        Blocks with ref count >= 1.
        """
class KvStorage:
    """
    K/V bytes of a pool of blocks in one 64-byte-aligned arena, block-major: [num_blocks, num_layers, 2 (K, V), num_kv_heads, block_size, head_dim]. Views are zero-copy and keep the arena alive; bfloat16 storage is viewed as uint16 bits (a BFloat16Array: torch.from_dlpack gives torch.bfloat16). Quantized storage (int8, fp8_e4m3, fp8_e5m2, int4) keeps codes and float32 scales in each head region (docs/layout.md): key_cache / value_cache view the codes, key_scales / value_scales the scales, array() the raw bytes.
    """
    def __init__(self, config: CacheConfig) -> None:
        """
        Allocate an arena of config.num_blocks blocks (zeroed). Raises MemoryError without the memory.
        """
    def __repr__(self) -> str:
        ...
    def array(self) -> numpy.ndarray:
        """
        Zero-copy view of the arena. Float dtypes: [num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim] elements. Quantized dtypes: [num_blocks, bytes_per_block] uint8, the raw bytes of each block (docs/layout.md).
        """
    def key_cache(self, layer: int) -> numpy.ndarray:
        """
        Zero-copy strided view of layer's keys: [num_blocks, num_kv_heads, block_size, head_dim] elements; for quantized storage the codes, uint8 [num_blocks, num_kv_heads, block_size, row_code_bytes] (head_dim, or ceil(head_dim / 2) for int4: two codes per byte, the even element in the low nibble).
        """
    def key_scales(self, layer: int) -> numpy.ndarray:
        """
        Quantized storage only (ValueError otherwise): zero-copy strided view of layer's key parameters, float32 [num_blocks, num_kv_heads, block_size, params_per_row]: int8 (scale, offset); fp8 (scale,); int4 (scale, offset) per group of 32 elements.
        """
    def read_slot(self, block_id: int, layer: int, offset: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """
        Copies of one token's (K, V), each [num_kv_heads, head_dim] in the storage dtype (dequantized float32 for quantized storage).
        """
    def value_cache(self, layer: int) -> numpy.ndarray:
        """
        Like key_cache, for values.
        """
    def value_scales(self, layer: int) -> numpy.ndarray:
        """
        Like key_scales, for values.
        """
    def write_slot(self, block_id: int, layer: int, offset: int, k: numpy.ndarray, v: numpy.ndarray) -> None:
        """
        Write one token's K and V ([num_kv_heads, head_dim] each, float32 or the storage dtype; float32 is rounded to nearest even) under the block's lock. Quantized storage takes float32 or float16 and quantizes each (token, head) row; ValueError (nothing written) for a non-finite value. k and v may be views of this storage: they are copied before the write.
        """
    @property
    def bytes_per_block(self) -> int:
        """
        Bytes of one block: K and V, all layers.
        """
    @property
    def config(self) -> CacheConfig:
        """
        The CacheConfig of its geometry.
        """
    @property
    def dtype(self) -> str:
        """
        'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8_e4m3' | 'fp8_e5m2' | 'int4' (views of bfloat16 are uint16 bits in a BFloat16Array, of the quantized dtypes uint8 codes).
        """
    @property
    def nbytes(self) -> int:
        """
        Bytes of the whole arena.
        """
    @property
    def num_blocks(self) -> int:
        """
        Blocks in the arena.
        """
class BatchMetadata:
    """
    Per-step arrays for attention kernels, all int32: block_tables [B, max_blocks] (padding -1), context_lens [B], CSR indptr [B+1], indices [nnz], last_block_len [B] (in (0, block_size]), slot_mapping [B] (slot of each sequence's last token), num_computed [B] (leading tokens whose K/V is written, in [0, context_lens]).
    """
    @property
    def block_tables(self) -> numpy.ndarray:
        """
        [B, max_blocks] int32: row i is sequence i's block ids, padded with -1.
        """
    @property
    def context_lens(self) -> numpy.ndarray:
        """
        [B] int32: tokens of each sequence (>= 1).
        """
    @property
    def indices(self) -> numpy.ndarray:
        """
        [nnz] int32: block ids, sequence after sequence (nnz = indptr[B]).
        """
    @property
    def indptr(self) -> numpy.ndarray:
        """
        [B + 1] int32: CSR row pointers into indices (indptr[0] = 0).
        """
    @property
    def last_block_len(self) -> numpy.ndarray:
        """
        [B] int32: tokens in each sequence's last block, in (0, block_size].
        """
    @property
    def num_computed(self) -> numpy.ndarray:
        """
        [B] int32: leading tokens of each sequence whose K/V is written, in [0, context_lens].
        """
    @property
    def slot_mapping(self) -> numpy.ndarray:
        """
        [B] int32: slot of each sequence's last token (where a decode step writes its K/V).
        """
class PagedKvCache:
    """
    Sequences, block tables, copy-on-write fork, swap to the host tier and batch metadata over one BlockPool + KvStorage. Thread-safe; every call is all-or-nothing.
    """
    def __contains__(self, seq_id: int) -> bool:
        """
        Whether the cache holds seq_id (resident or swapped out).
        """
    def __init__(self, config: CacheConfig, *, tier_queue_blocks: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        """
        Allocate the device arena (config.num_blocks blocks) and the host arena (config.num_host_blocks, none if 0). tier_queue_blocks > 0: a tier write queue of that many blocks (for ferrum_kv.PagedKvCache(tiers=...); needs prefix caching). Raises ValueError for a bad config, MemoryError without the memory.
        """
    def __len__(self) -> int:
        """
        The number of sequences held.
        """
    def _import_from_tiers(self, tokens: typing.Any, namespace: bytes, first_block: typing.SupportsInt | typing.SupportsIndex, values: list, codecs: list) -> tuple:
        """
        For ferrum_kv.tiers: values[i] (a bytes-like object, opened with codecs[i]) as the K/V of full block first_block + i of tokens. Headers are checked in order up to the first that fails, each payload where it was copied into the arena; the good leading run is published where the device lookup stops (ImportBlocks), for add_sequence to find. Returns (blocks published, statuses of the checked values).
        """
    def _tier_export(self, codec: TierCodec, max_blocks: typing.SupportsInt | typing.SupportsIndex) -> tuple:
        """
        For ferrum_kv.tiers: copies out up to max_blocks blocks of the tier write queue, sealed with codec, and unpins them: (hashes uint8 [k, 32], values uint8 [k, value_bytes]).
        """
    def add_sequence(self, seq_id: int, tokens: typing.Any, *, namespace: bytes = b'', priority: int = 0) -> int:
        """
        Create seq_id holding tokens (1-D int array, >= 1 token) and give it blocks. With prefix caching, reuses the longest run of leading full blocks cached under the same namespace (bytes: tenant, model, adapter) and returns how many tokens that covers (a multiple of block_size, < len(tokens)); 0 without prefix caching. priority: retention priority of the blocks it releases (priority_lru eviction keeps higher ones longer).
        """
    def add_sequence_with_logits(self, seq_id: int, tokens: typing.Any, *, namespace: bytes = b'', priority: int = 0) -> tuple:
        """
        add_sequence, and a whole-prompt hit where it can: returns (cached_tokens, logits). If these exact tokens were stored with store_logits in this namespace and their blocks are still cached, the sequence reuses all of them: (len(tokens), the stored logits as a new float32 array); the engine samples from them and skips prefill. Otherwise (what add_sequence returns, None).
        """
    def append_batch(self, seq_ids: typing.Any, tokens: typing.Any) -> None:
        """
        One decode step: append tokens[i] to seq_ids[i] (distinct ids). All-or-nothing. The tokens before each appended one count as computed (a decode token is sampled from its predecessor's logits): with prefix caching, blocks they filled are published.
        """
    def append_tokens(self, seq_id: int, tokens: typing.Any) -> None:
        """
        Append tokens (1-D int array, may be empty; ids >= 0) to a resident sequence, taking fresh blocks only when its last block fills; a shared, partly filled last block is copied first (copy-on-write). The new tokens are not computed: write their K/V (slot_mapping) and mark_computed. Raises KeyError for an unknown seq_id, InvalidStateError if it is swapped out, ValueError for a negative token id, OutOfBlocksError when the blocks are short (nothing changes).
        """
    def batch_metadata(self, seq_ids: typing.Any) -> BatchMetadata:
        """
        BatchMetadata for resident sequences (new int32 arrays).
        """
    def block_table(self, seq_id: int) -> numpy.ndarray:
        """
        The sequence's block ids (int32 copy; host-tier ids while swapped out).
        """
    def cached_prefix_len(self, tokens: typing.Any, *, namespace: bytes = b'') -> int:
        """
        How many leading tokens add_sequence(seq_id, tokens, namespace=namespace) would reuse from the prefix cache now (what it would return: a multiple of block_size, < len(tokens); 0 without prefix caching). Read-only: no statistics, no eviction order change. tokens: 1-D int array, >= 1 token. Raises ValueError for an empty prompt or a negative token id.
        """
    @typing.overload
    def can_allocate(self, num_tokens: int) -> bool:
        """
        Whether a sequence of num_tokens tokens, none of them cached, would fit now (free plus evictable blocks). Prefix hits are not discounted: pass the tokens instead to ask about a prompt. Raises ValueError for num_tokens < 0.
        """
    @typing.overload
    def can_allocate(self, tokens: typing.Any, *, namespace: bytes = b'') -> bool:
        """
        Whether add_sequence(seq_id, tokens, namespace=namespace) would succeed now: the prompt's prefix hits (cached_prefix_len) need no fresh block. tokens: 1-D int array, >= 1 token. Changes nothing. Raises ValueError for an empty prompt or a negative token id.
        """
    def can_append(self, seq_id: int, num_tokens: int) -> bool:
        """
        Whether append_tokens of num_tokens tokens to seq_id would succeed now (counting a copy-on-write copy of a shared last block); False for a swapped-out sequence. Raises KeyError for an unknown seq_id, ValueError for num_tokens < 0.
        """
    def check_invariants(self) -> None:
        """
        Validate every internal invariant (ref counts match the tables, cached and evictable blocks, free + used == total, chain keys); raises InvariantError naming the first one broken. O(blocks + tokens): for tests.
        """
    def drain_events(self) -> list:
        """
        Prefix-cache events since the last drain, oldest first: dicts with seq_no (+1 per event), type ('stored' | 'removed' | 'cleared'), hash (32 bytes, the block's block_hashes() value; empty for 'cleared') and block_id (-1 for 'cleared'). Always empty unless the config has enable_kv_events=True.
        """
    def fork(self, parent_id: int, child_id: int, *, num_tokens: int | None = None) -> None:
        """
        child shares every block of parent; the first append into a shared, partly filled block copies it first. num_tokens: share only the parent's first num_tokens tokens (1 <= num_tokens <= num_tokens(parent_id), else ValueError; nothing changes): the child holds those tokens and their blocks, its computed count min(the parent's, num_tokens), and appends its own tokens after them. Raises KeyError for an unknown parent, ValueError if child_id exists, InvalidStateError if the parent is swapped out.
        """
    def free_sequence(self, seq_id: int, *, num_computed: int | None = None) -> None:
        """
        Forget seq_id and release its blocks (device or host). With prefix caching, its published blocks stay cached (evictable) for later prompts. num_computed: first mark_computed(seq_id, num_computed), so that a finished request's last full block is published too (decode steps mark every token but the last one; pass how many tokens have K/V written). Raises KeyError for an unknown seq_id, ValueError unless 0 <= num_computed <= num_tokens (nothing changes).
        """
    def gather_kv(self, seq_id: int, layer: int) -> tuple[numpy.ndarray, numpy.ndarray]:
        """
        Contiguous copies (K, V), each [num_tokens, num_kv_heads, head_dim] in the storage dtype (dequantized float32 for quantized storage), in token order, from whichever tier holds the sequence.
        """
    def is_swapped(self, seq_id: int) -> bool:
        """
        Whether the sequence's blocks are in the host tier (swap_out). Raises KeyError for an unknown seq_id.
        """
    def mark_computed(self, seq_id: int, num_tokens: int) -> None:
        """
        The K/V of the first num_tokens tokens is written (monotonic). With prefix caching, full blocks among them become findable by later sequences.
        """
    def mark_computed_batch(self, seq_ids: typing.Any, num_tokens: typing.Any) -> None:
        """
        mark_computed(seq_ids[i], num_tokens[i]) for a whole batch in one call; the batch is validated before anything changes.
        """
    def num_computed(self, seq_id: int) -> int:
        """
        How many leading tokens have their K/V written: raised by mark_computed, prefix hits and decode steps (append_batch); in [0, num_tokens]. Attention over the sequence needs it at least at the query tokens' start. Raises KeyError for an unknown seq_id.
        """
    def num_tokens(self, seq_id: int) -> int:
        """
        The sequence's token count (>= 1). Raises KeyError for an unknown seq_id.
        """
    def reset_prefix_cache(self) -> None:
        """
        Drop every cached block that no sequence holds, and every stored prompt's logits; blocks that sequences hold stay with them but are no longer findable.
        """
    def set_pressure_callback(self, callback: typing.Any) -> None:
        """
        callback(level: str) runs (with the GIL, outside the cache's lock) whenever a call changes memory_pressure; None removes it (TypeError for anything else that is not callable). Exceptions it raises are reported as unraisable, never propagated. A callback that refers to the cache (a bound method of its owner) does not keep it alive: the garbage collector sees through it.
        """
    def slot_mapping(self, seq_id: int, start: int, end: int) -> numpy.ndarray:
        """
        int32 slots (block_id * block_size + offset) of token positions [start, end).
        """
    def stats(self) -> dict:
        """
        Counters as a dict of ints.
        """
    def store_logits(self, seq_id: int, logits: typing.Any) -> None:
        """
        Keep logits (1-D, converted to float32) as what follows the sequence's tokens, with a copy of its partly filled last block, for add_sequence_with_logits. Needs CacheConfig(max_prompt_logits > 0) and every token's K/V written (mark_computed(seq_id, num_tokens)); InvalidStateError otherwise. Storing the same prompt again replaces its logits; beyond max_prompt_logits the least recently used prompt is dropped. OutOfBlocksError if no block is free or reclaimable for the copy.
        """
    def swap_in(self, seq_id: int) -> None:
        """
        Copy the sequence back into fresh device blocks (its block ids may change).
        """
    def swap_out(self, seq_id: int) -> None:
        """
        Copy the sequence's blocks to the host tier and free its device blocks.
        """
    def tokens(self, seq_id: int) -> numpy.ndarray:
        """
        The sequence's token ids (int32 copy).
        """
    def write_kv(self, layer: int, slots: typing.Any, k: numpy.ndarray, v: numpy.ndarray) -> None:
        """
        Scatter K/V ([n, num_kv_heads, head_dim] each; float32, rounded to the storage dtype, or the storage dtype itself; quantized storage takes float32 or float16 and quantizes each (token, head) row) into slots ([n] int32, block_id * block_size + offset); slot -1 is skipped. Every slot is validated before any write: IndexError for one out of range, InvalidStateError for one in a block that no sequence or cache entry holds (slots taken before free_sequence or swap_out); ValueError for a shape or dtype mismatch, or a non-finite value for quantized storage. Takes no lock over the data: the scheduler keeps the blocks from being freed meanwhile. k and v may be views of the cache's own storage: they are copied before the write.
        """
    @property
    def config(self) -> CacheConfig:
        """
        The CacheConfig (read-only).
        """
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
class TierCodec:
    """
    The tier value format (docs/tiers.md): a 128-byte header (magic, format version, flags, fingerprint, block hash, payload length, XXH64 of the payload, optional HMAC-SHA256) and the block's bytes. Immutable; thread-safe.
    """
    header_bytes: typing.ClassVar[int] = 128
    def __init__(self, fingerprint: bytes, payload_bytes: typing.SupportsInt | typing.SupportsIndex, *, secret: bytes = b'') -> None:
        """
        fingerprint: 16 bytes; payload_bytes: a block's bytes (>= 1); secret: bytes, empty for no MAC. ValueError otherwise.
        """
    def open(self, hash: bytes, value: typing.Any) -> str:
        """
        Check value (bytes) as the block named hash: 'ok', or why not: 'malformed' | 'foreign' | 'wrong_block' | 'bad_checksum' | 'unauthenticated'.
        """
    def seal(self, hash: bytes, payload: bytes) -> bytes:
        """
        The value of the block named hash (32 bytes) holding payload (bytes).
        """
    def seal_rows(self, hashes: numpy.typing.NDArray[numpy.uint8], values: numpy.typing.NDArray[numpy.uint8]) -> None:
        """
        Seal, in place, values [k, value_bytes] (uint8, payload after the header) as the blocks named hashes [k, 32] (uint8): for ferrum_kv.tiers.
        """
    @property
    def authenticates(self) -> bool:
        """
        Whether values carry (and must carry) a MAC.
        """
    @property
    def fingerprint(self) -> bytes:
        ...
    @property
    def payload_bytes(self) -> int:
        ...
    @property
    def value_bytes(self) -> int:
        """
        header_bytes + payload_bytes.
        """
def attention_fast_isas(dtype: str) -> list[str]:
    """
    The attention kernel variants whose precision="fast" runs low-precision dot products over K/V stored as dtype on this CPU; the others run the exact code for "fast".
    """
def attention_isas() -> list[str]:
    """
    The attention kernel variants this CPU runs, fastest first ("auto" picks the first).
    """
def block_hashes(tokens: typing.Any, block_size: int, namespace: bytes = b'') -> list[bytes]:
    """
    Prefix hashes of the full blocks of tokens (1-D array of non-negative int32 token ids): a list of 32-byte digests, one per full block (a partial trailing block is ignored). parent_0 = SHA-256(b'ferrum-kv/v1' + namespace); block i hashes to h_i = SHA-256(parent || its token ids as little-endian uint32), and parent = h_i. ValueError for a negative token, a non-integer array or block_size < 1; TypeError when namespace is not bytes.
    """
def dequantize_rows(codes: numpy.ndarray, params: numpy.ndarray, dtype: str, head_dim: int) -> numpy.ndarray:
    """
    The float32 rows [..., head_dim] that codes and params (as quantize_rows returns them) read back as: what gather_kv and read_slot return for quantized storage.
    """
def get_num_threads() -> int:
    """
    The thread count that num_threads=0 means in the attention kernels and memory_read_probe: the CPUs this process may run on (its affinity mask, at most 1024) unless set_num_threads changed it.
    """
def memory_read_probe(data: numpy.ndarray, num_threads: int = 0) -> int:
    """
    Read every 8-byte word of a C-contiguous array (nbytes a multiple of 8) on num_threads threads and return their wrapping sum: the read-bandwidth ceiling for the benchmarks.
    """
def paged_attention_decode_tables(q: numpy.ndarray, storage: KvStorage, layer: int, block_tables: numpy.ndarray, context_lens: numpy.ndarray, scale: typing.SupportsFloat | typing.SupportsIndex | None = None, out: numpy.ndarray | None = None, isa: str = 'auto', num_threads: int = 0, *, sliding_window: int | None = None, soft_cap: typing.SupportsFloat | typing.SupportsIndex | None = None, alibi_slopes: numpy.ndarray | None = None, precision: str = 'exact') -> numpy.ndarray:
    """
    Paged-attention decode over explicit block tables.
    
    Parameters
    ----------
    q : np.ndarray, [batch, num_q_heads, head_dim], float32, C-contiguous
        One query token per sequence; num_q_heads a multiple of the storage's num_kv_heads. Every
        array argument may also be a CPU DLPack tensor (torch.Tensor, ...), read zero-copy.
    storage : KvStorage
    layer : int
    block_tables : np.ndarray, [batch, max_blocks], int32 (padding -1 past each sequence's blocks)
    context_lens : np.ndarray, [batch], int32, each in [1, max_blocks * block_size]
    scale : float, optional
        Softmax scale; default 1 / sqrt(head_dim).
    out : np.ndarray or a CPU DLPack tensor (torch.Tensor), optional
        Like q, writeable; written in full, in place, and returned (the object given). A new array
        when omitted.
    isa : str
        "auto" (default), "avx512", "avx2", "portable" or "reference" (the float64 scalar oracle).
    num_threads : int
        In [0, 1024]; 0 (default) uses get_num_threads() (the CPUs this process may run on, unless
        set_num_threads changed it). Fewer are used when the system cannot start more.
    sliding_window : int, optional
        Attend only to the last sliding_window positions (the query's own included); >= 1.
    soft_cap : float, optional
        Logit soft cap (> 0): logits -> soft_cap * tanh(logits / soft_cap), on the scaled logits.
    alibi_slopes : np.ndarray, [num_q_heads], float32, optional
        ALiBi: adds alibi_slopes[h] * (key_pos - query_pos) to query head h's logits (after the cap).
    precision : str
        "exact" (default): float32 arithmetic on the stored values. "fast": low-precision dot products
        where the kernel variant has them on this CPU (attention_fast_isas(dtype)); relative error
        below 1.5e-2 against float64. Elsewhere "fast" runs the exact code.
    
    Returns
    -------
    np.ndarray, [batch, num_q_heads, head_dim], float32: out.
    
    Raises ValueError for a bad shape, dtype or value (out overlapping q or the storage's arena
    included), IndexError for a layer out of range. The GIL is released during the computation; the caller keeps the blocks read unchanged.
    """
def paged_attention_prefill_tables(q: numpy.ndarray, storage: KvStorage, layer: int, block_tables: numpy.ndarray, context_lens: numpy.ndarray, query_lens: numpy.ndarray, scale: typing.SupportsFloat | typing.SupportsIndex | None = None, out: numpy.ndarray | None = None, isa: str = 'auto', num_threads: int = 0, *, sliding_window: int | None = None, soft_cap: typing.SupportsFloat | typing.SupportsIndex | None = None, alibi_slopes: numpy.ndarray | None = None, precision: str = 'exact') -> numpy.ndarray:
    """
    Paged-attention (chunked) prefill over explicit block tables.
    
    Parameters
    ----------
    q : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32, C-contiguous
        The last query_lens[i] tokens of sequence i, sequence after sequence; row j of sequence i is
        position context_lens[i] - query_lens[i] + j and attends causally to positions 0..itself.
    storage : KvStorage
    layer : int
    block_tables : np.ndarray, [batch, max_blocks], int32
    context_lens : np.ndarray, [batch], int32, >= 1 (K/V of all these tokens, chunk included, is in
        the cache)
    query_lens : np.ndarray, [batch], int32, each in [1, context_lens[i]]
    scale, out, isa, num_threads, sliding_window, soft_cap, alibi_slopes, precision
        As in paged_attention_decode_tables (the window and ALiBi distances use each row's position).
    
    Returns
    -------
    np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32: out.
    """
def quantize_rows(x: numpy.ndarray, dtype: str, isa: str = 'auto') -> tuple:
    """
    Quantize the rows (last axis, head_dim) of a C-contiguous float32 / float16 array to a quantized storage format, with the C++ write path's kernels (isa as for attention: 'auto' | 'portable' | 'avx2' | 'avx512'; 'reference' runs 'portable'). Returns (codes uint8 [..., row_code_bytes], params float32 [..., params_per_row]), bit-identical to ferrum_kv.reference.quantize. ValueError for a non-finite value (or, for int8/int4, a row whose max - min overflows float32).
    """
def set_num_threads(num_threads: int) -> None:
    """
    Set the thread count that num_threads=0 means, for the whole process (int in [1, 1024]; ValueError otherwise).
    """
def sha256_impl() -> str:
    """
    Which SHA-256 implementation this process runs: 'sha-ni' or 'portable'.
    """
__version__: str = '0.1.0'
