"""Paged attention over a PagedKvCache: the kernels of ``ferrum_kv._core`` fed with the cache's
batch metadata (block tables and context lengths of the given sequences).

Thread safety: the kernels read the cache's storage without locks; the caller guarantees that no
block of these sequences is freed or rewritten during the call (docs/attention.md).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from ferrum_kv import _core

IntArray = Union[np.ndarray, Sequence[int]]


def paged_attention_decode(
    q: np.ndarray,
    cache: _core.PagedKvCache,
    layer: int,
    seq_ids: IntArray,
    scale: Optional[float] = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """One query token per sequence attending to all of that sequence's cached tokens.

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

    Returns
    -------
    np.ndarray, [B, num_q_heads, head_dim], float32
    """
    metadata = cache.batch_metadata(seq_ids)
    return _core.paged_attention_decode_tables(
        q, cache.storage, layer, metadata.block_tables, metadata.context_lens, scale=scale, out=out
    )


def paged_attention_prefill(
    q: np.ndarray,
    cache: _core.PagedKvCache,
    layer: int,
    seq_ids: IntArray,
    query_lens: IntArray,
    scale: Optional[float] = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Causal attention for the last ``query_lens[i]`` tokens of each sequence (chunked prefill).

    Query row ``j`` of sequence ``i`` is token position ``num_tokens(i) - query_lens[i] + j`` and
    attends to every position up to and including its own, which may sit in cached blocks
    (a cached prefix or earlier chunks). The K/V of the query tokens must already be written.

    Parameters
    ----------
    q : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32, C-contiguous
        The query rows of sequence 0, then of sequence 1, ...
    cache, layer, seq_ids, scale : as for paged_attention_decode
    query_lens : 1-D int array [B], each in [1, num_tokens(seq_ids[i])]
    out : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32, optional

    Returns
    -------
    np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32
    """
    metadata = cache.batch_metadata(seq_ids)
    query_lens = np.asarray(query_lens)
    if query_lens.dtype.kind in "iu" and query_lens.dtype != np.int32:
        if query_lens.size and (query_lens.min() < 0 or query_lens.max() > np.iinfo(np.int32).max):
            raise ValueError(f"query_lens out of the int32 range: {query_lens}")
        query_lens = query_lens.astype(np.int32)
    return _core.paged_attention_prefill_tables(
        q, cache.storage, layer, metadata.block_tables, metadata.context_lens,
        np.ascontiguousarray(query_lens), scale=scale, out=out,
    )
