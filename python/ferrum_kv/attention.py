"""Paged attention over a PagedKvCache: the kernels of ``ferrum_kv._core`` fed with the cache's
batch metadata (block tables and context lengths of the given sequences).

Both functions check the sequences' computed counts first: every key position a query attends to
must have its K/V written, either marked computed (``mark_computed``, a prefix hit, a decode
step) or one of the query tokens this call computes (whose K/V the caller wrote just before).

Thread safety: the kernels read the cache's storage without locks; the caller guarantees that no
block of these sequences is freed or rewritten during the call (docs/attention.md).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ferrum_kv import _core

IntArray = Union[np.ndarray, Sequence[int]]  # or a CPU DLPack tensor (torch.Tensor, ...)


def paged_attention_decode(
    q: np.ndarray,
    cache: _core.PagedKvCache,
    layer: int,
    seq_ids: IntArray,
    scale: Optional[float] = None,
    out: Optional[np.ndarray] = None,
    *,
    sliding_window: Optional[int] = None,
    soft_cap: Optional[float] = None,
    alibi_slopes: Optional[np.ndarray] = None,
    isa: str = "auto",
    num_threads: int = 0,
    precision: str = "exact",
) -> np.ndarray:
    """One query token per sequence attending to all of that sequence's cached tokens.

    The query is each sequence's last token (position ``num_tokens - 1``), whose K/V the caller
    wrote at ``batch_metadata(seq_ids).slot_mapping`` before the call; every earlier token must
    be computed (``num_computed >= num_tokens - 1``).

    Parameters
    ----------
    q : np.ndarray, [B, num_q_heads, head_dim], float32, C-contiguous
        num_q_heads a multiple of the cache's num_kv_heads (grouped-query attention).
    cache : PagedKvCache
    layer : int
    seq_ids : 1-D int array of B resident sequence ids (repeats allowed)
    scale : float, optional
        Softmax scale; default ``1 / sqrt(head_dim)``.
    out : np.ndarray, [B, num_q_heads, head_dim], float32, optional
        Written in place and returned.
    sliding_window : int, optional
        Attend only to the last ``sliding_window`` positions, the query's own included (>= 1).
    soft_cap : float, optional
        Logit soft cap (> 0): ``logits -> soft_cap * tanh(logits / soft_cap)`` on the scaled logits.
    alibi_slopes : np.ndarray, [num_q_heads], float32, optional
        ALiBi: adds ``alibi_slopes[h] * (key_pos - query_pos)`` to head h's logits (after the cap).
    isa : str
        Kernel variant: "auto" (default: the fastest this CPU runs), or one of
        ``ferrum_kv.attention_isas()`` ("avx512", "avx2", "portable", "reference").
    num_threads : int
        Threads for the call; 0 (default) uses the library's default.
    precision : str
        "exact" (default): float32 arithmetic on the stored K/V. "fast": low-precision dot
        products where the kernel variant has them for the cache's dtype on this CPU
        (``ferrum_kv.attention_fast_isas(dtype)``), relative error below 1.5e-2 against float64;
        elsewhere the exact code runs.

    Returns
    -------
    np.ndarray, [B, num_q_heads, head_dim], float32

    Raises
    ------
    KeyError
        An unknown seq_id.
    InvalidStateError
        A swapped-out sequence, or one whose tokens before the last are not all computed (the
        message names it).
    ValueError
        q or out of the wrong shape or dtype; a bad isa, precision, sliding_window, soft_cap or
        alibi_slopes.
    """
    metadata = cache.batch_metadata(seq_ids)
    _check_computed(seq_ids, metadata, metadata.context_lens - 1)
    return _core.paged_attention_decode_tables(
        q, cache.storage, layer, metadata.block_tables, metadata.context_lens, scale=scale, out=out,
        isa=isa, num_threads=num_threads, sliding_window=sliding_window, soft_cap=soft_cap,
        alibi_slopes=alibi_slopes, precision=precision,
    )


def paged_attention_prefill(
    q: np.ndarray,
    cache: _core.PagedKvCache,
    layer: int,
    seq_ids: IntArray,
    query_lens: IntArray,
    scale: Optional[float] = None,
    out: Optional[np.ndarray] = None,
    *,
    context_lens: Optional[IntArray] = None,
    sliding_window: Optional[int] = None,
    soft_cap: Optional[float] = None,
    alibi_slopes: Optional[np.ndarray] = None,
    isa: str = "auto",
    num_threads: int = 0,
    precision: str = "exact",
) -> np.ndarray:
    """Causal attention for the last ``query_lens[i]`` tokens of each sequence (chunked prefill).

    Query row ``j`` of sequence ``i`` is token position ``context_lens[i] - query_lens[i] + j``
    (by default ``context_lens[i] = num_tokens(i)``: the sequence's last tokens) and attends to
    every position up to and including its own, which may sit in cached blocks (a cached prefix
    or earlier chunks). The K/V of the query tokens must already be written; every position
    before them must be computed (``num_computed >= context_lens[i] - query_lens[i]``: mark each
    chunk computed before the next one attends over it).

    Parameters
    ----------
    q : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32, C-contiguous
        The query rows of sequence 0, then of sequence 1, ...
    cache, layer, seq_ids, scale : as for paged_attention_decode
    query_lens : 1-D int array [B], each in [1, context_lens[i]]
    out : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32, optional
    context_lens : 1-D int array [B], optional
        Where each chunk ends, each in [1, num_tokens(seq_ids[i])]: a chunk in the middle of a
        prompt whose blocks are all allocated (``add_sequence`` of the whole prompt, prefilled
        over several steps). Default: ``num_tokens`` of each sequence.
    sliding_window, soft_cap, alibi_slopes : as for paged_attention_decode; the window and the
        ALiBi distances are relative to each query row's own position.
    isa, num_threads, precision : as for paged_attention_decode

    Returns
    -------
    np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32

    Raises
    ------
    KeyError, InvalidStateError, ValueError
        As for paged_attention_decode (InvalidStateError when a position before a sequence's
        query rows is not computed); ValueError also for context_lens or query_lens out of range.
    """
    metadata = cache.batch_metadata(seq_ids)
    query_lens = _as_int32(query_lens, "query_lens")
    if context_lens is None:
        context_lens = metadata.context_lens
    else:
        context_lens = _as_int32(context_lens, "context_lens")
        if context_lens.shape != metadata.context_lens.shape or np.any(
            (context_lens < 1) | (context_lens > metadata.context_lens)
        ):
            raise ValueError(
                f"context_lens must be {metadata.context_lens.shape[0]} values in "
                f"[1, num_tokens] = [1, {metadata.context_lens.tolist()}], got {context_lens.tolist()}"
            )
    if query_lens.dtype == np.int32 and query_lens.shape == context_lens.shape:
        # Rows with query_lens out of range are the kernel's to report (ValueError).
        valid = (query_lens >= 1) & (query_lens <= context_lens)
        _check_computed(seq_ids, metadata, np.where(valid, context_lens - query_lens, 0))
    return _core.paged_attention_prefill_tables(
        q, cache.storage, layer, metadata.block_tables, context_lens, query_lens,
        scale=scale, out=out, isa=isa, num_threads=num_threads, sliding_window=sliding_window,
        soft_cap=soft_cap, alibi_slopes=alibi_slopes, precision=precision,
    )


def _check_computed(seq_ids: IntArray, metadata: _core.BatchMetadata, needed: np.ndarray) -> None:
    """InvalidStateError naming the first sequence i with num_computed < needed[i]: the call would
    read K/V that was never marked computed and that the call itself does not compute."""
    short = np.flatnonzero(metadata.num_computed < needed)
    if short.size:
        i = int(short[0])
        seq_id = int(_as_array(seq_ids, "seq_ids")[i])
        raise _core.InvalidStateError(
            f"sequence {seq_id} (seq_ids[{i}]) has {metadata.num_computed[i]} "
            f"computed tokens, but this call attends over its first {int(needed[i])} tokens "
            f"beside the query tokens: write their K/V and mark_computed(seq_id, {int(needed[i])}) "
            f"first"
        )


def _as_array(values: IntArray, name: str) -> np.ndarray:
    """values as a NumPy array; a DLPack producer (a torch tensor, ...) zero-copy, refused with
    ValueError unless it is on the CPU (as the core refuses it)."""
    if hasattr(values, "__dlpack__") and not isinstance(values, np.ndarray):
        device_type, device_id = values.__dlpack_device__()
        if int(device_type) != 1:  # kDLCPU
            raise ValueError(f"{name} must be a CPU tensor, got one on DLPack device "
                             f"({int(device_type)}, {device_id})")
        return np.from_dlpack(values)
    return np.asarray(values)


def _as_int32(values: IntArray, name: str) -> np.ndarray:
    """A C-contiguous int32 copy of an integer array (other dtypes pass through for the core's
    validation to name); ValueError when a value leaves the int32 range."""
    values = _as_array(values, name)
    if values.dtype.kind in "iu" and values.dtype != np.int32:
        if values.size and (values.min() < 0 or values.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{name} out of the int32 range: {values}")
        values = values.astype(np.int32)
    return np.ascontiguousarray(values)
