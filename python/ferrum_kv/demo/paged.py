"""The serving path's attention backend: one step of a batch over a PagedKvCache."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

import ferrum_kv as fkv


class PagedStepAttention:
    """Attention for one scheduler step (a ``KvAttention`` backend of ``Decoder.forward``).

    The step's token rows are laid out decode rows first, then the prefill chunks:

    - ``decode_ids[i]``: one row, the sequence's last token (already appended to the cache);
    - ``prefill_ids[i]``: rows for positions ``[chunk_starts[i], chunk_ends[i])``, a chunk whose
      blocks the sequence already holds (a chunk may stop short of the end of the prompt).

    Per layer, the K/V of every row is written to its slot with ``write_kv``, then decode rows go
    through ``paged_attention_decode`` and chunks through ``paged_attention_prefill``.

    Parameters
    ----------
    cache : PagedKvCache
    decode_ids : sequence of int
    prefill_ids, chunk_starts, chunk_ends : sequences of int, same length
    precision : str
        The kernels' ``precision``: "exact" (default) or "fast".
    """

    def __init__(self, cache: fkv.PagedKvCache, decode_ids: Sequence[int],
                 prefill_ids: Sequence[int], chunk_starts: Sequence[int],
                 chunk_ends: Sequence[int], precision: str = "exact") -> None:
        self._cache = cache
        self._precision = precision
        self._decode_ids = np.asarray(decode_ids, dtype=np.int64)
        self._prefill_ids = np.asarray(prefill_ids, dtype=np.int64)
        self._chunk_ends = np.asarray(chunk_ends, dtype=np.int32)
        self._query_lens = self._chunk_ends - np.asarray(chunk_starts, dtype=np.int32)
        slots = []
        if len(self._decode_ids):
            slots.append(cache.batch_metadata(self._decode_ids).slot_mapping)
        slots += [cache.slot_mapping(int(s), int(a), int(b))
                  for s, a, b in zip(prefill_ids, chunk_starts, chunk_ends)]
        self._slots = np.concatenate(slots) if slots else np.empty(0, np.int32)  # [T] int32

    def __call__(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
                 scale: Optional[float] = None, sliding_window: Optional[int] = None,
                 soft_cap: Optional[float] = None, num_threads: int = 0) -> np.ndarray:
        """See ``KvAttention``: q [T, Hq, D], k, v [T, Hkv, D] float32 -> [T, Hq, D] float32.
        ``scale``, ``sliding_window``, ``soft_cap``, ``num_threads``: as for
        ``paged_attention_decode`` (the transformers engine passes its model's, and the kernel
        threads that torch's threads leave free)."""
        self._cache.write_kv(layer, self._slots, k, v)
        out = np.empty_like(q)
        options = dict(sliding_window=sliding_window, soft_cap=soft_cap, num_threads=num_threads)
        num_decode = len(self._decode_ids)
        if num_decode:
            fkv.paged_attention_decode(q[:num_decode], self._cache, layer, self._decode_ids,
                                       scale, out[:num_decode], precision=self._precision,
                                       **options)
        if len(self._prefill_ids):
            fkv.paged_attention_prefill(q[num_decode:], self._cache, layer, self._prefill_ids,
                                        self._query_lens, scale, out[num_decode:],
                                        context_lens=self._chunk_ends,
                                        precision=self._precision, **options)
        return out
