"""NumPy reference implementations (the oracles the C++ paths are tested against).

bfloat16 has no NumPy dtype: ferrum-kv stores and exposes it as the upper 16 bits of a float32,
in ``uint16`` arrays. The two helpers below convert, rounding to nearest even like the C++ core.

The quantized storage formats (``int8``, ``fp8_e4m3`` alias ``fp8``, ``fp8_e5m2``, ``int4``) are
defined by ``quantize`` / ``dequantize`` below (docs/layout.md gives the byte layout); the C++
write path (``ferrum_kv.quantize_rows``, ``write_kv``, ``write_slot``) is bit-identical to them.
They are written independently of the C++ code: FP8 rounding picks the nearest of the format's
values (a table built from the bit fields), not the C++ bit manipulation.
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


QUANTIZED_DTYPES = ("int8", "fp8_e4m3", "fp8_e5m2", "int4")
INT4_GROUP = 32
# name -> (exponent bias, mantissa bits, largest finite positive code)
_FP8 = {"fp8_e4m3": (7, 3, 0x7E), "fp8_e5m2": (15, 2, 0x7B)}


def _quantized_name(dtype: str) -> str:
    name = "fp8_e4m3" if dtype == "fp8" else dtype
    if name not in QUANTIZED_DTYPES:
        raise ValueError(f"dtype must be one of {QUANTIZED_DTYPES} (or 'fp8'), got {dtype!r}")
    return name


def row_code_bytes(dtype: str, head_dim: int) -> int:
    """Bytes of one row's codes: head_dim (int8, fp8) or ceil(head_dim / 2) (int4)."""
    return (head_dim + 1) // 2 if _quantized_name(dtype) == "int4" else head_dim


def params_per_row(dtype: str, head_dim: int) -> int:
    """float32 parameters per row: int8 2 (scale, offset); fp8 1 (scale); int4 2 per group of 32."""
    name = _quantized_name(dtype)
    if name == "int4":
        return 2 * -(-head_dim // INT4_GROUP)
    return 2 if name == "int8" else 1


def fp8_values(dtype: str) -> np.ndarray:
    """The value of each of the 256 FP8 codes (float64, exact; NaN codes NaN, E5M2 inf codes inf)."""
    bias, mbits, _ = _FP8[_quantized_name(dtype)]
    codes = np.arange(256)
    exponent = (codes & 0x7F) >> mbits
    mantissa = (codes & ((1 << mbits) - 1)).astype(np.float64)
    magnitude = np.where(
        exponent == 0,
        np.ldexp(mantissa, 1 - bias - mbits),
        np.ldexp(1.0 + mantissa / (1 << mbits), exponent - bias),
    )
    top = exponent == (0x7F >> mbits)
    if mbits == 3:  # E4M3FN: only S.1111.111 is special (NaN)
        magnitude = np.where(top & (mantissa == 7), np.nan, magnitude)
    else:  # E5M2: S.11111.00 infinity, the rest NaN
        magnitude = np.where(top, np.where(mantissa == 0, np.inf, np.nan), magnitude)
    return np.where(codes & 0x80, -magnitude, magnitude)


def _fp8_encode(y: np.ndarray, dtype: str) -> np.ndarray:
    """Round finite float32 y to the nearest FP8 code (ties to the even code), saturating."""
    _, _, max_code = _FP8[dtype]
    values = fp8_values(dtype)[: max_code + 1]  # the finite non-negative values, increasing
    a = np.abs(y.astype(np.float64))
    upper = np.minimum(np.searchsorted(values, a, side="left"), max_code)  # values[upper] >= a
    lower = np.maximum(upper - 1, 0)
    d_low = a - values[lower]
    d_up = values[upper] - a
    pick_up = (d_up < d_low) | ((d_up == d_low) & (upper % 2 == 0))
    code = np.where(a >= values[max_code], max_code, np.where(pick_up, upper, lower))
    return (code | np.where(np.signbit(y), 0x80, 0)).astype(np.uint8)


def _asymmetric(rows: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale, offset) of float32 rows [n, m] with codes in [0, levels]."""
    lo = rows.min(axis=1)
    hi = rows.max(axis=1)
    with np.errstate(over="ignore"):
        span = hi - lo
    if not np.all(np.isfinite(span)):
        raise ValueError("a row's range (max - min) overflows float32: cannot quantize")
    zero = np.float32(0)
    scale = span / np.float32(levels) + zero  # + 0: -0 becomes +0
    offset = lo + zero
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.rint((rows - offset[:, None]) / scale[:, None])
    q = np.where(scale[:, None] == 0, 0, np.minimum(q, levels))
    return q.astype(np.uint8), scale, offset


def quantize(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Quantize rows (the last axis, head_dim) to a storage format: the documented definition.

    Parameters
    ----------
    x : np.ndarray [..., head_dim], float32 or float16 (widened exactly); other dtypes are cast
        to float32 first. Every value must be finite.
    dtype : "int8" | "fp8_e4m3" (or "fp8") | "fp8_e5m2" | "int4"

    Returns
    -------
    (codes, params): codes uint8 [..., row_code_bytes(dtype, head_dim)] (int4: two codes per
    byte, element 2i in the low nibble), params float32 [..., params_per_row(dtype, head_dim)].

    Definitions (float32 arithmetic, round half to even, no fused multiply-add):
    int8: scale = (max - min) / 255 + 0, offset = min + 0 (+0 turns -0 into +0),
    code = 0 if scale == 0 else clip(rint((x - offset) / scale), 0, 255); params (scale, offset).
    int4: the same with 15, per group of 32 elements (the last group may be shorter).
    fp8: scale = absmax / 448 (E4M3) or / 57344 (E5M2); code = 0 if scale == 0 else the FP8
    value nearest x / scale (ties to the even code, beyond the largest finite saturating; -0
    gives 0x80); params (scale,).

    Raises ValueError for a non-finite value, or (int8, int4) a row whose max - min overflows.
    """
    name = _quantized_name(dtype)
    x = np.asarray(x)
    x = x.astype(np.float32) if x.dtype != np.float32 else x
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a last axis (head_dim) >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x has a non-finite value: cannot quantize")
    head_dim = x.shape[-1]
    rows = x.reshape(-1, head_dim)
    if name == "int8":
        codes, scale, offset = _asymmetric(rows, 255)
        params = np.stack([scale, offset], axis=1)
    elif name == "int4":
        groups = [_asymmetric(rows[:, g : g + INT4_GROUP], 15)
                  for g in range(0, head_dim, INT4_GROUP)]
        nibbles = np.concatenate([g[0] for g in groups], axis=1)
        if head_dim % 2:
            nibbles = np.concatenate([nibbles, np.zeros((len(rows), 1), np.uint8)], axis=1)
        codes = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
        params = np.stack([v for g in groups for v in (g[1], g[2])], axis=1)
    else:
        max_value = np.float32(fp8_values(name)[_FP8[name][2]])
        scale = np.abs(rows).max(axis=1) / max_value
        with np.errstate(invalid="ignore", divide="ignore"):
            y = rows / scale[:, None]
        codes = np.where(scale[:, None] == 0, np.uint8(0), _fp8_encode(np.nan_to_num(y), name))
        codes = codes.astype(np.uint8)
        params = scale[:, None]
    shape = x.shape[:-1]
    return (codes.reshape(*shape, codes.shape[-1]),
            params.astype(np.float32).reshape(*shape, params.shape[-1]))


def dequantize(codes: np.ndarray, params: np.ndarray, dtype: str, head_dim: int) -> np.ndarray:
    """The float32 values [..., head_dim] that quantize's (codes, params) stand for.

    int8 / int4: offset + float32(code * scale) (the product rounded, then the sum); fp8:
    value(code) * scale. This is what gather_kv / read_slot return for quantized storage.
    """
    name = _quantized_name(dtype)
    codes = np.asarray(codes, dtype=np.uint8)
    params = np.asarray(params, dtype=np.float32)
    lead = codes.shape[:-1]
    c = codes.reshape(-1, codes.shape[-1])
    p = params.reshape(-1, params.shape[-1])
    if name in _FP8:
        out = fp8_values(name).astype(np.float32)[c] * p[:, :1]
    else:
        if name == "int4":
            c = np.stack([c & 0xF, c >> 4], axis=2).reshape(len(c), 2 * c.shape[1])[:, :head_dim]
            group = np.arange(head_dim) // INT4_GROUP
            scale, offset = p[:, 2 * group], p[:, 2 * group + 1]
        else:
            scale, offset = p[:, :1], p[:, 1:2]
        out = offset + c.astype(np.float32) * scale
    return out.astype(np.float32).reshape(*lead, head_dim)


def round_to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """What storing float32 ``x`` in a cache of ``dtype`` keeps, widened back to float32.

    Parameters
    ----------
    x : np.ndarray, any shape, float32; for a quantized dtype [..., head_dim] (rows are
        quantized along the last axis, as the cache quantizes each (token, KV head) row)
    dtype : "float32" | "float16" | "bfloat16" | "int8" | "fp8_e4m3" | "fp8" | "fp8_e5m2" | "int4"
    """
    x = np.asarray(x, dtype=np.float32)
    if dtype in QUANTIZED_DTYPES or dtype == "fp8":
        return dequantize(*quantize(x, dtype), dtype, x.shape[-1])
    if dtype == "float32":
        return x.copy()
    if dtype == "float16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return bfloat16_bits_to_float32(float32_to_bfloat16_bits(x))
    raise ValueError(f"unknown dtype {dtype!r}")


def storage_to_float32(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Widen an array in a storage dtype (as a view or read_slot returns it) to float32.

    Quantized storage reads back as float32 already (gather_kv, read_slot): returned as float32.
    """
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
