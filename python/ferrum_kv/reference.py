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
