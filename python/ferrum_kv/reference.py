"""NumPy reference implementations (the oracles the C++ paths are tested against).

bfloat16 has no NumPy dtype: ferrum-kv stores and exposes it as the upper 16 bits of a float32,
in ``uint16`` arrays. The two helpers below convert, rounding to nearest even like the C++ core.
"""

from __future__ import annotations

import numpy as np


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even; NaN stays NaN).

    Parameters
    ----------
    x : np.ndarray, any shape, float32 (other float dtypes are cast to float32 first)

    Returns
    -------
    np.ndarray, same shape, uint16: the bfloat16 bit patterns.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(0x40)
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16, any shape) to float32 exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """What storing float32 ``x`` in a cache of ``dtype`` keeps, widened back to float32.

    Parameters
    ----------
    x : np.ndarray, any shape, float32
    dtype : "float32" | "float16" | "bfloat16"
    """
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.copy()
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return bfloat16_bits_to_float32(float32_to_bfloat16_bits(x))
    raise ValueError(f"unknown dtype {dtype!r}")


def storage_to_float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Widen an array in a storage dtype (as a view or read_slot returns it) to float32."""
    if dtype == "bfloat16":
        return bfloat16_bits_to_float32(stored)
    return np.asarray(stored).astype(np.float32)


def _gather_kv(storage, layer: int, table: np.ndarray, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """K and V of a sequence's first ``num_tokens`` tokens, widened (or dequantized) to float64.

    Returns two arrays [num_tokens, num_kv_heads, head_dim], float64.
    """
    dtype = storage.dtype
    block_size = storage.config.block_size
    if dtype not in ("float32", "float16", "bfloat16"):
        # Quantized storage: the dequantized rows, as read_slot (and gather_kv) return them.
        slots = [storage.read_slot(int(table[t // block_size]), layer, t % block_size)
                 for t in range(num_tokens)]
        return (np.stack([k for k, _ in slots]).astype(np.float64),
                np.stack([v for _, v in slots]).astype(np.float64))
    blocks = np.asarray(table[: -(-num_tokens // block_size)], dtype=np.int64)
    k = storage.key_cache(layer)[blocks]  # [blocks, num_kv_heads, block_size, head_dim]
    v = storage.value_cache(layer)[blocks]

    def tokens(x: np.ndarray) -> np.ndarray:
        x = storage_to_float32(x, dtype).astype(np.float64).transpose(0, 2, 1, 3)
        return x.reshape(-1, x.shape[2], x.shape[3])[:num_tokens]

    return tokens(k), tokens(v)


def paged_attention_prefill_reference(
    q: np.ndarray,
    storage,
    layer: int,
    block_tables: np.ndarray,
    context_lens: np.ndarray,
    query_lens: np.ndarray,
    scale: float | None = None,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    alibi_slopes: np.ndarray | None = None,
) -> np.ndarray:
    """Causal attention of the last ``query_lens[i]`` tokens of each sequence, in float64.

    Parameters
    ----------
    q : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32
        Query rows, sequence after sequence; num_q_heads is a multiple of num_kv_heads and query
        head h reads KV head h // (num_q_heads // num_kv_heads).
    storage : ferrum_kv.KvStorage
        K/V as stored (16-bit values widened exactly; quantized rows dequantized, as read_slot
        returns them).
    layer : int
    block_tables : np.ndarray, [batch, max_blocks], int32
        Token t of sequence i is in block block_tables[i, t // block_size], offset t % block_size.
    context_lens : np.ndarray, [batch], int32
        Tokens of each sequence with K/V in the cache (the query chunk included).
    query_lens : np.ndarray, [batch], int32
        Row j of sequence i is position context_lens[i] - query_lens[i] + j and attends to
        positions 0..itself.
    scale : float, optional
        Softmax scale, default 1 / sqrt(head_dim).
    sliding_window : int, optional
        Row at position p attends only to positions p - sliding_window + 1 .. p (>= 1).
    soft_cap : float, optional
        Scaled logits l become soft_cap * tanh(l / soft_cap) (> 0).
    alibi_slopes : np.ndarray, [num_q_heads], optional
        Adds alibi_slopes[h] * (key_pos - query_pos) to head h's logits, after the soft cap.

    Returns
    -------
    np.ndarray, [sum(query_lens), num_q_heads, head_dim], float64
    """
    q = np.asarray(q, dtype=np.float64)
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    _check_features(num_q_heads, sliding_window, soft_cap, alibi_slopes)
    group = num_q_heads // storage.config.num_kv_heads
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    out = np.empty_like(q)
    row = 0
    for i, (context, queries) in enumerate(zip(context_lens, query_lens)):
        context, queries = int(context), int(queries)
        k, v = _gather_kv(storage, layer, block_tables[i], context)
        k = np.repeat(k, group, axis=1)  # [context, num_q_heads, head_dim]
        v = np.repeat(v, group, axis=1)
        rows = q[row : row + queries]  # [queries, num_q_heads, head_dim]
        scores = rows.transpose(1, 0, 2) @ k.transpose(1, 2, 0) * scale  # [heads, queries, context]
        positions = context - queries + np.arange(queries)
        keys = np.arange(context)
        if soft_cap is not None:
            scores = soft_cap * np.tanh(scores / soft_cap)
        if alibi_slopes is not None:
            distance = (keys[None, :] - positions[:, None]).astype(np.float64)  # [queries, context]
            scores += np.asarray(alibi_slopes, np.float64)[:, None, None] * distance[None]
        hidden = keys[None, :] > positions[:, None]
        if sliding_window is not None:
            hidden |= keys[None, :] <= positions[:, None] - sliding_window
        scores[:, hidden] = -np.inf
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        values = v.transpose(1, 0, 2)  # [heads, context, head_dim]
        if np.isfinite(values).all():
            out[row : row + queries] = (weights @ values).transpose(1, 0, 2)
        else:  # hidden keys add nothing, even an inf or NaN value (0 * inf would be NaN)
            for j in range(queries):
                seen = ~hidden[j]
                out[row + j] = np.einsum("hk,hkd->hd", weights[:, j, seen], values[:, seen])
        row += queries
    return out


def paged_attention_decode_reference(
    q: np.ndarray,
    storage,
    layer: int,
    block_tables: np.ndarray,
    context_lens: np.ndarray,
    scale: float | None = None,
    *,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    alibi_slopes: np.ndarray | None = None,
) -> np.ndarray:
    """Attention of one query token per sequence over all its cached tokens, in float64.

    Parameters
    ----------
    q : np.ndarray, [batch, num_q_heads, head_dim], float32
    storage, layer, block_tables, context_lens, scale, sliding_window, soft_cap, alibi_slopes
        As in :func:`paged_attention_prefill_reference`.

    Returns
    -------
    np.ndarray, [batch, num_q_heads, head_dim], float64
    """
    ones = np.ones(len(context_lens), dtype=np.int32)
    return paged_attention_prefill_reference(
        q, storage, layer, block_tables, context_lens, ones, scale,
        sliding_window=sliding_window, soft_cap=soft_cap, alibi_slopes=alibi_slopes,
    )


def _check_features(num_q_heads: int, sliding_window, soft_cap, alibi_slopes) -> None:
    """ValueError (naming the value) for an out-of-range optional feature argument."""
    if sliding_window is not None and (
        isinstance(sliding_window, bool) or int(sliding_window) != sliding_window or sliding_window < 1
    ):
        raise ValueError(f"sliding_window must be an int >= 1 or None, got {sliding_window!r}")
    if soft_cap is not None and not (np.isfinite(soft_cap) and soft_cap > 0):
        raise ValueError(f"soft_cap must be a finite float > 0 or None, got {soft_cap!r}")
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes)
        if slopes.shape != (num_q_heads,) or not np.isfinite(slopes).all():
            raise ValueError(
                f"alibi_slopes must be {num_q_heads} finite values [num_q_heads], got shape "
                f"{slopes.shape}: {slopes.tolist()}"
            )
