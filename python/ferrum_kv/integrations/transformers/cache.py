"""``FerrumCache``: a transformers ``Cache`` whose K/V lives only in a ferrum_kv ``PagedKvCache``.

Each batch row of ``generate`` is one cache sequence. A hook on the model's base module sees
every forward pass that carries a ``FerrumCache`` (``cache=``) and plans it before any layer runs:

- **First pass (prompt).** Each row's real tokens (``attention_mask == 1``; pads are never
  stored) become a sequence with ``add_sequence``, which reuses the longest cached prefix
  (prefix caching, keyed by the token ids and the model's namespace). The leading columns that
  every row has cached (or that are padding) are cut from ``input_ids`` / ``position_ids`` before
  the model runs, so a repeated system prompt is not prefilled again. A row identical to an
  earlier one (``num_return_sequences``, beams) is a ``fork`` of it: it shares its blocks and
  writes nothing.
- **Later passes.** One new token per row is ``append_batch`` (a decode step); several (assisted
  decoding's candidates, or a continued conversation) are ``append_tokens``.

Per layer, ``update`` scatters the pass's K/V into the rows' slots (``write_kv``; slots of cached
or forked positions are skipped) and the "ferrum" attention runs ``paged_attention_decode`` (one
token per row) or ``paged_attention_prefill`` over the cache. After the pass the written tokens
are marked computed. ``update`` returns its inputs: no K/V is kept in torch tensors.

Beam search's ``reorder_cache`` (and ``batch_select_indices`` / ``batch_repeat_interleave``)
re-map rows to sequences with ``fork`` and ``free_sequence``: a row that keeps its sequence keeps
it; a sequence taken by several rows is forked (copy-on-write on the next append into a shared,
partly filled block); a sequence no row takes is freed. ``crop`` shortens every row (see
``_truncate``).

Supported: float32, float16 and bfloat16 storage (K/V reach ``write_kv`` and q the kernels as
float32 NumPy arrays; ``write_kv`` rounds to the storage dtype), any model
whose attention layers call ``cache.update`` and the attention interface with ``sliding_window``
/ ``softcap`` (Llama, Mistral, Qwen2, Gemma2, ...). Not thread-safe: one ``generate`` at a time
per FerrumCache (several FerrumCache objects may share one PagedKvCache, which is thread-safe).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from transformers.cache_utils import Cache

import ferrum_kv as fkv
from ferrum_kv.integrations.transformers import _attention
from ferrum_kv.integrations.transformers._model import (
    Geometry, check_attention, check_fits, config_for, kernel_threads, namespace, rows, unpack)

# Sequence ids of every FerrumCache come from this counter: caches sharing a PagedKvCache never
# collide, and ids start far above the small ids other users of that cache tend to pick.
_seq_ids = itertools.count(1 << 40)


@dataclass(eq=False)
class _Pass:
    """One forward pass of ``generate`` over the cache's rows (the "ferrum" attention's step).

    Attributes
    ----------
    seq_ids : list of int
        The sequences with query tokens in this pass, in row order.
    query_lens : np.ndarray, [len(seq_ids)] int32
        Query tokens of each (the last ones of the sequence).
    slots : np.ndarray, [sum(query_lens)] int32
        Where each query token's K/V goes; -1 for positions already computed (prefix hits,
        forked rows).
    index : (torch.Tensor, torch.Tensor) or None
        (row, column) of each query token in the pass's [B, T] input, row-major; None when every
        column of every row is a query token.
    decode : bool
        One query token per row: the decode kernel.
    """

    cache: "FerrumCache"
    seq_ids: list[int]
    query_lens: np.ndarray
    slots: np.ndarray
    index: Optional[tuple[torch.Tensor, torch.Tensor]]
    decode: bool
    columns: int  # columns of the pass's input (after any cut)
    layers_written: set[int] = field(default_factory=set)

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
               scale: Optional[float], sliding_window: Optional[int],
               soft_cap: Optional[float]) -> torch.Tensor:
        """See ``_attention.Step``: the K/V is already in the cache (``update``)."""
        q = rows(query, self.index)
        out = np.empty_like(q)
        kv = self.cache.kv_cache
        options = dict(sliding_window=sliding_window, soft_cap=soft_cap,
                       num_threads=kernel_threads())
        if self.decode:
            fkv.paged_attention_decode(q, kv, layer, self.seq_ids, scale, out, **options)
        else:
            fkv.paged_attention_prefill(q, kv, layer, self.seq_ids, self.query_lens, scale, out,
                                        **options)
        return unpack(out, query, self.index)


def _free_all(kv: fkv.PagedKvCache, live: set[int]) -> None:
    """Free the sequences in ``live`` that ``kv`` still holds (reset and garbage collection)."""
    for seq_id in list(live):
        if seq_id in kv:
            kv.free_sequence(seq_id)
    live.clear()


class FerrumCache(Cache):
    """A transformers ``Cache`` over a ferrum_kv ``PagedKvCache`` (see the module docstring).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM; call ``model.set_attn_implementation("ferrum")`` before generating.
    num_blocks : int, optional
        Blocks of a new PagedKvCache (``config_for``); required unless ``kv_cache`` is given.
    dtype : str
        Storage dtype of a new PagedKvCache: "float32", "float16" or "bfloat16".
    enable_prefix_caching : bool
        Of a new PagedKvCache.
    kv_cache : PagedKvCache, optional
        Build on this cache instead (its geometry must fit the model). FerrumCache objects over
        one ``kv_cache`` share its prefix cache; each frees only its own sequences.
    block_size : int
        Of a new PagedKvCache.

    Raises
    ------
    ValueError
        Neither or both of ``num_blocks`` and ``kv_cache``; a ``kv_cache`` that does not fit the
        model; a bad dtype or size (from ``CacheConfig``).
    TypeError
        ``model`` is not a transformers model.
    """

    def __init__(self, model: torch.nn.Module, num_blocks: Optional[int] = None,
                 dtype: str = "float32", enable_prefix_caching: bool = True, *,
                 kv_cache: Optional[fkv.PagedKvCache] = None, block_size: int = 16) -> None:
        if (num_blocks is None) == (kv_cache is None):
            raise ValueError("pass exactly one of num_blocks (a new PagedKvCache) and kv_cache "
                             "(an existing one)")
        if kv_cache is None:
            kv_cache = fkv.PagedKvCache(config_for(
                model, num_blocks, dtype, block_size=block_size,
                enable_prefix_caching=enable_prefix_caching))
        self._geometry: Geometry = check_fits(model, kv_cache)
        super().__init__(layers=[])
        self._kv = kv_cache
        self._model = model
        self._namespace = namespace(model)
        self._live: set[int] = set()  # sequences this object holds (freed on reset / collection)
        self._rows: list[Optional[int]] = []  # batch row -> its sequence (None: no tokens yet)
        self._stored: list[np.ndarray] = []  # per pass: [B, columns] bool, token stored
        self._seen = 0  # columns of input seen (pads included), as DynamicCache counts them
        self._pass: Optional[_Pass] = None
        self._previous_step: Optional[_attention.Step] = None
        self._broken: Optional[str] = None
        weakref.finalize(self, _free_all, kv_cache, self._live)
        _install_hooks(model)

    @staticmethod
    def config_for(model: torch.nn.Module, num_blocks: int, dtype: str = "float32",
                   **options: object) -> fkv.CacheConfig:
        """The ``CacheConfig`` (prefix caching on) of a PagedKvCache that fits ``model``, for
        ``FerrumCache(model, kv_cache=fkv.PagedKvCache(config))``; ``options`` go to
        ``CacheConfig`` (``block_size``, ``num_host_blocks``, ``enable_prefix_caching``, ...)."""
        return config_for(model, num_blocks, dtype, **options)

    @property
    def kv_cache(self) -> fkv.PagedKvCache:
        """The PagedKvCache holding the K/V."""
        return self._kv

    @property
    def seq_ids(self) -> list[Optional[int]]:
        """The sequence id of each batch row (None for a row with no token stored yet)."""
        return list(self._rows)

    def stats(self) -> dict:
        """The PagedKvCache's counters (``PagedKvCache.stats``): prefix hits, blocks, copies."""
        return self._kv.stats()

    # ---- the transformers Cache interface ----

    def __len__(self) -> int:
        return self._geometry.num_layers

    def __repr__(self) -> str:
        return (f"FerrumCache(rows={len(self._rows)}, seen={self._seen}, "
                f"dtype={self._kv.config.dtype!r}, blocks={self._kv.config.num_blocks})")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's K/V ([B, Hkv, T, D] each) of layer ``layer_idx`` into the paged
        cache; returns the inputs (the "ferrum" attention reads the cache, not them)."""
        step = self._pass
        if step is None:
            raise RuntimeError("FerrumCache.update outside a forward pass of the model it was "
                               "built for (the model's hook plans each pass)")
        self._kv.write_kv(layer_idx, step.slots, rows(key_states, step.index),
                          rows(value_states, step.index))
        step.layers_written.add(layer_idx)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self._seen + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self._seen

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return bool(self._rows)

    @property
    def is_croppable(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return len(self._rows) if self._rows else -1

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self._geometry.num_layers

    @property
    def is_linear(self) -> list[bool]:
        return [False] * self._geometry.num_layers

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * self._geometry.num_layers

    def reset(self) -> None:
        """Free every sequence of this object (their published blocks stay in the prefix cache)
        and forget the batch: the object can serve a new ``generate``."""
        _free_all(self._kv, self._live)
        self._rows, self._stored, self._seen = [], [], 0
        self._pass, self._broken = None, None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i continues from row ``beam_idx[i]`` (fork / free, no K/V copy)."""
        self._remap(beam_idx.tolist())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._remap(torch.as_tensor(indices).tolist())

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._remap([row for row in range(len(self._rows)) for _ in range(repeats)])

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` columns (a negative count, as DynamicCache takes
        it) from every row: assisted decoding's rejected candidates."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove (or 0), got "
                             f"{tokens_to_remove}")
        remove = -tokens_to_remove
        if remove > self._seen:
            raise ValueError(f"cannot crop {remove} columns: the cache has seen {self._seen}")
        if remove == 0:
            return
        stored = np.concatenate(self._stored, axis=1)  # [B, seen]
        for row, seq_id in enumerate(self._rows):
            if seq_id is not None:
                self._truncate(row, int(stored[row, :self._seen - remove].sum()))
        self._stored = [stored[:, :self._seen - remove]]
        self._seen -= remove

    # ---- passes (called by the model's hooks) ----

    def _begin(self, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor]) -> int:
        """Plan the pass over ``input_ids`` [B, T]: allocate, find prefix hits, compute slots.
        Returns how many leading columns the model may skip (cached or padding in every row);
        the pass becomes the current "ferrum" step."""
        if self._broken:
            raise fkv.InvalidStateError(f"this FerrumCache is unusable ({self._broken}): reset() it")
        check_attention(self._model)
        if input_ids is None:
            raise ValueError("FerrumCache needs input_ids (the token ids key the prefix cache); "
                             "inputs_embeds alone is not supported")
        batch, columns = input_ids.shape
        if self._rows and batch != len(self._rows):
            raise ValueError(f"the batch has {batch} rows but the cache holds {len(self._rows)}: "
                             f"reset() it for a new batch")
        if attention_mask is None:
            new = np.ones((batch, columns), dtype=bool)
        else:
            if attention_mask.dim() != 2 or attention_mask.shape != (batch, self._seen + columns):
                raise ValueError(
                    f"attention_mask must be 2-D [batch, seen + new columns] = "
                    f"[{batch}, {self._seen + columns}], got {list(attention_mask.shape)}")
            new = attention_mask[:, self._seen:].bool().cpu().numpy()
        if not self._rows:
            self._rows = [None] * batch
        ids = input_ids.cpu().numpy()
        try:
            step, skip = self._plan(ids, new)
        except fkv.OutOfBlocksError:
            self._broken = "a pass ran out of blocks while allocating"
            raise
        self._stored.append(new)
        self._seen += skip
        self._pass = step
        self._previous_step = _attention.set_current(step)
        return skip

    def _end(self) -> None:
        """After the pass: mark its tokens computed if every layer wrote its K/V."""
        step, self._pass = self._pass, None
        _attention.set_current(self._previous_step)
        if step is None:
            return
        if len(step.layers_written) != self._geometry.num_layers:
            self._broken = (f"a forward pass stopped after {len(step.layers_written)} of "
                            f"{self._geometry.num_layers} layers")
            return
        self._kv.mark_computed_batch(step.seq_ids, [self._kv.num_tokens(s) for s in step.seq_ids])
        self._seen += step.columns

    def _plan(self, ids: np.ndarray, new: np.ndarray) -> tuple[_Pass, int]:
        batch, columns = ids.shape
        if columns == 1 and new.all() and None not in self._rows:  # a decode step
            seq_ids = list(self._rows)
            self._kv.append_batch(seq_ids, ids[:, 0])
            return _Pass(self, seq_ids, np.ones(batch, np.int32),
                         self._kv.batch_metadata(seq_ids).slot_mapping, None, True, 1), 0
        fresh = all(seq_id is None for seq_id in self._rows)
        firsts = {}  # (tokens, mask) of a fresh row -> that row: later identical rows fork it
        hits, forked, cut = [], set(), columns
        for row in range(batch):
            tokens = ids[row][new[row]]
            seq_id = self._rows[row]
            if seq_id is not None:
                hit = self._kv.num_tokens(seq_id)  # everything before is computed
                self._kv.append_tokens(seq_id, tokens)
            elif len(tokens):
                seq_id = next(_seq_ids)
                key = (ids[row].tobytes(), new[row].tobytes())
                if key in firsts:  # writes nothing: the row it forks writes the shared blocks
                    self._kv.fork(self._rows[firsts[key]], seq_id)
                    hit = hits[firsts[key]]
                    forked.add(row)
                else:
                    firsts[key] = row
                    hit = self._kv.add_sequence(seq_id, tokens, namespace=self._namespace)
                self._live.add(seq_id)
                self._rows[row] = seq_id
            else:
                hits.append(0)
                continue
            hits.append(hit)
            if fresh:  # the model may skip the columns up to this row's first uncached token
                cut = min(cut, int(np.flatnonzero(new[row])[hit]))
        skip = cut if fresh and cut < columns else 0
        query = new[:, skip:]
        seq_ids, query_lens, slots = [], [], []
        for row in range(batch):
            count = int(query[row].sum())
            if not count:
                continue
            seq_id = self._rows[row]
            end = self._kv.num_tokens(seq_id)
            first = end - count  # position of the row's first query token
            row_slots = self._kv.slot_mapping(seq_id, first, end)
            row_slots[:len(row_slots) if row in forked else max(hits[row] - first, 0)] = -1
            seq_ids.append(seq_id)
            query_lens.append(count)
            slots.append(row_slots)
        if not seq_ids:
            raise ValueError("the pass has no token to run: every row is padding")
        index = None if query.all() else tuple(torch.from_numpy(i) for i in np.nonzero(query))
        return _Pass(self, seq_ids, np.asarray(query_lens, np.int32), np.concatenate(slots),
                     index, False, columns - skip), skip

    def _remap(self, sources: list[int]) -> None:
        """Row i takes the sequence of row ``sources[i]``."""
        if any(not 0 <= s < len(self._rows) for s in sources):
            raise IndexError(f"row indices must be in [0, {len(self._rows)}), got {sources}")
        if sources == list(range(len(self._rows))):
            return
        taken: set[int] = set()
        rows_now = []
        for source in sources:
            seq_id = self._rows[source]
            if seq_id is not None and source in taken:
                child = next(_seq_ids)
                self._kv.fork(seq_id, child)
                self._live.add(child)
                seq_id = child
            taken.add(source)
            rows_now.append(seq_id)
        for source, seq_id in enumerate(self._rows):
            if seq_id is not None and source not in taken:
                self._kv.free_sequence(seq_id)
                self._live.discard(seq_id)
        self._rows = rows_now
        self._stored = [np.concatenate(self._stored, axis=1)[sources]] if self._stored else []

    def _truncate(self, row: int, length: int) -> None:
        """Keep the first ``length`` tokens of row ``row``'s sequence: the row moves to a fork of
        them (``fork(num_tokens=length)``: their blocks shared, no K/V copied; a partly filled
        last block is copied on the next append into it) and the old sequence is freed."""
        seq_id = self._rows[row]
        if length >= self._kv.num_tokens(seq_id):
            return
        if length == 0:
            self._kv.free_sequence(seq_id)
            self._live.discard(seq_id)
            self._rows[row] = None
            return
        kept = next(_seq_ids)
        self._kv.fork(seq_id, kept, num_tokens=length)
        self._live.add(kept)
        self._rows[row] = kept
        self._kv.free_sequence(seq_id)
        self._live.discard(seq_id)


def _install_hooks(model: torch.nn.Module) -> None:
    """Hooks on the model's base module (once per model) that plan and close every forward pass
    carrying a FerrumCache."""
    base = getattr(model, "base_model", model)
    if getattr(base, "_ferrum_hooks", None) is None:
        base._ferrum_hooks = (
            base.register_forward_pre_hook(_before_forward, with_kwargs=True),
            base.register_forward_hook(_after_forward, with_kwargs=True, always_call=True),
        )


def _cache_of(kwargs: dict) -> Optional[FerrumCache]:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache if isinstance(cache, FerrumCache) else None


def _before_forward(module: torch.nn.Module, args: tuple, kwargs: dict):
    cache = _cache_of(kwargs)
    if cache is None:
        return None
    positional = kwargs.get("input_ids") is None and bool(args)
    input_ids = args[0] if positional else kwargs.get("input_ids")
    skip = cache._begin(input_ids, kwargs.get("attention_mask"))
    if not skip:
        return None
    if positional:
        args = (args[0][:, skip:],) + tuple(args[1:])
    else:
        kwargs["input_ids"] = kwargs["input_ids"][:, skip:]
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"][..., skip:]
    return args, kwargs


def _after_forward(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
    cache = _cache_of(kwargs)
    if cache is not None:
        cache._end()
