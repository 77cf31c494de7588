"""The serving path's attention backend: one step of a batch over a PagedKvCache."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

import ferrum_kv as fkv
from ferrum_kv import _core
from ferrum_kv.attention import _check_computed


class PagedStepAttention:
    """Attention for one scheduler step (a ``KvAttention`` backend of ``Decoder.forward``).

    The step's token rows are laid out decode rows first, then the prefill chunks:

    - ``decode_ids[i]``: one row, the sequence's last token (already appended to the cache);
    - ``prefill_ids[i]``: rows for positions ``[chunk_starts[i], chunk_ends[i])``, a chunk whose
      blocks the sequence already holds (a chunk may stop short of the end of the prompt).

    Per layer, the K/V of every row is written to its slot with ``write_kv``, then decode rows go
    through the decode kernel and chunks through the prefill kernel, over block tables taken once
    for the step (the scheduler changes no table until the step ends).

    Every position a row attends to must be computed (``num_computed``), or written by this
    step's rows: a chunk may start after positions that another chunk of the same step computes
    in blocks both sequences hold (a ``fork`` of a prefix: the scheduler's
    ``share_prefix_in_step``). Checked once, here.

    Parameters
    ----------
    cache : PagedKvCache
    decode_ids : sequence of int
    prefill_ids, chunk_starts, chunk_ends : sequences of int, same length
    precision : str
        The kernels' ``precision``: "exact" (default) or "fast".

    Raises
    ------
    InvalidStateError
        A position before a row's own is neither computed nor written by the step (the message
        names the sequence); the errors of ``batch_metadata`` for unknown or swapped-out ids.
    """

    def __init__(self, cache: fkv.PagedKvCache, decode_ids: Sequence[int],
                 prefill_ids: Sequence[int], chunk_starts: Sequence[int],
                 chunk_ends: Sequence[int], precision: str = "exact") -> None:
        self._cache = cache
        self._precision = precision
        decode_ids = np.asarray(decode_ids, dtype=np.int64)
        prefill_ids = np.asarray(prefill_ids, dtype=np.int64)
        self._chunk_ends = np.asarray(chunk_ends, dtype=np.int32)
        self._query_lens = self._chunk_ends - np.asarray(chunk_starts, dtype=np.int32)
        self._decode = cache.batch_metadata(decode_ids) if len(decode_ids) else None
        self._prefill = cache.batch_metadata(prefill_ids) if len(prefill_ids) else None
        slots = [] if self._decode is None else [self._decode.slot_mapping]
        slots += [cache.slot_mapping(int(s), int(a), int(b))
                  for s, a, b in zip(prefill_ids, chunk_starts, chunk_ends)]
        self._slots = np.concatenate(slots) if slots else np.empty(0, np.int32)  # [T] int32
        if self._decode is not None:
            _check_computed(decode_ids, self._decode, self._decode.context_lens - 1)
        if self._prefill is not None:
            _check_computed(prefill_ids, self._prefill, self._written_before(
                prefill_ids, self._prefill.num_computed, self._chunk_ends - self._query_lens))

    def _written_before(self, seq_ids: np.ndarray, computed: np.ndarray,
                        starts: np.ndarray) -> np.ndarray:
        """Per chunk, the positions before it that must be computed: its start, or its computed
        count where every position in between is one of the step's own slots."""
        needed = starts.copy()
        for i in np.flatnonzero(computed < starts):
            pending = self._cache.slot_mapping(int(seq_ids[i]), int(computed[i]), int(starts[i]))
            if np.isin(pending, self._slots).all():
                needed[i] = computed[i]
        return needed

    def __call__(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
                 scale: Optional[float] = None, sliding_window: Optional[int] = None,
                 soft_cap: Optional[float] = None, num_threads: int = 0) -> np.ndarray:
        """See ``KvAttention``: q [T, Hq, D], k, v [T, Hkv, D] float32 -> [T, Hq, D] float32.
        ``scale``, ``sliding_window``, ``soft_cap``, ``num_threads``: as for
        ``paged_attention_decode`` (the transformers engine passes its model's, and the kernel
        threads that torch's threads leave free)."""
        self._cache.write_kv(layer, self._slots, k, v)
        out = np.empty_like(q)
        options = dict(scale=scale, sliding_window=sliding_window, soft_cap=soft_cap,
                       num_threads=num_threads, precision=self._precision)
        storage = self._cache.storage
        num_decode = 0
        if self._decode is not None:
            num_decode = len(self._decode.context_lens)
            _core.paged_attention_decode_tables(
                q[:num_decode], storage, layer, self._decode.block_tables,
                self._decode.context_lens, out=out[:num_decode], **options)
        if self._prefill is not None:
            _core.paged_attention_prefill_tables(
                q[num_decode:], storage, layer, self._prefill.block_tables, self._chunk_ends,
                self._query_lens, out=out[num_decode:], **options)
        return out
