"""PagedKvCache: the C++ cache manager, with optional storage tiers (ferrum_kv.tiers).

Without tiers it is the C++ class's behaviour exactly (the overrides pass straight through). With
tiers, add_sequence and add_sequence_with_logits also load the blocks after the device hits from
the tiers, a background thread writes published blocks to them, stats() reports them and
flush_tiers() waits for queued writes (docs/tiers.md).
"""

from __future__ import annotations

from ferrum_kv import _core

# Blocks a cache with tiers may hold pinned for the tier writer at once (published blocks beyond
# it are not written to the tiers: counted as tier_writes_skipped).
DEFAULT_TIER_QUEUE_BLOCKS = 256


class PagedKvCache(_core.PagedKvCache):
    __doc__ = _core.PagedKvCache.__doc__ + (
        " With tiers=[DiskTier(...), RedisTier(...)] (fastest first) and model_id=str, blocks "
        "are also kept in and loaded from storage tiers (ferrum_kv.tiers; needs "
        "enable_prefix_caching).")

    def __init__(self, config, tiers=None, model_id=None, *,
                 tier_queue_blocks: int = DEFAULT_TIER_QUEUE_BLOCKS):
        """Allocate the arenas (see the C++ constructor); with tiers, start their writer thread.

        Parameters
        ----------
        config : CacheConfig
        tiers : list of ferrum_kv.tiers.Tier, optional
            Storage tiers, fastest first. Need ``config.enable_prefix_caching`` (ValueError).
        model_id : str
            Required with tiers: names the model in the tiers' keys (caches with different
            model_id never share blocks). ValueError without tiers.
        tier_queue_blocks : int
            With tiers, the most published blocks pinned while they wait for the writer; blocks
            published while it is full are not written (counted as tier_writes_skipped).
        """
        self._tiers = None
        if tiers is None:
            if model_id is not None:
                raise ValueError("model_id is for caches with tiers")
            super().__init__(config)
            return
        from ferrum_kv.tiers.base import Tier

        tiers = list(tiers)
        for i, tier in enumerate(tiers):
            if not isinstance(tier, Tier):
                raise TypeError(f"tiers[{i}] must be a ferrum_kv.tiers.Tier, got "
                                f"{type(tier).__name__}")
        if not tiers:
            raise ValueError("tiers must name at least one tier (or be None)")
        if not isinstance(config, _core.CacheConfig):
            raise TypeError(f"config must be a CacheConfig, got {type(config).__name__}")
        if not config.enable_prefix_caching:
            raise ValueError("tiers need CacheConfig(enable_prefix_caching=True)")
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"a cache with tiers needs model_id (a non-empty str), got "
                             f"{model_id!r}")
        if isinstance(tier_queue_blocks, bool) or not isinstance(tier_queue_blocks, int) \
                or tier_queue_blocks < 1:
            raise ValueError(f"tier_queue_blocks must be an int >= 1, got {tier_queue_blocks!r}")
        super().__init__(config, tier_queue_blocks=tier_queue_blocks)
        from ferrum_kv.tiers.manager import TierManager

        self._tiers = TierManager(self, tiers, model_id)

    def add_sequence(self, seq_id, tokens, *, namespace=b"", priority=0):
        if self._tiers is None:
            return super().add_sequence(seq_id, tokens, namespace=namespace, priority=priority)
        return self._tiers.add_sequence(self, seq_id, tokens, namespace, priority, False)

    add_sequence.__doc__ = _core.PagedKvCache.add_sequence.__doc__ + (
        " With tiers, blocks after the device hits are loaded from the tiers and count as hits.")

    def add_sequence_with_logits(self, seq_id, tokens, *, namespace=b"", priority=0):
        if self._tiers is None:
            return super().add_sequence_with_logits(seq_id, tokens, namespace=namespace,
                                                    priority=priority)
        return self._tiers.add_sequence(self, seq_id, tokens, namespace, priority, True)

    add_sequence_with_logits.__doc__ = _core.PagedKvCache.add_sequence_with_logits.__doc__

    def stats(self) -> dict:
        """Counters as a dict of ints; with tiers, also "tiers": {tier name: {hits, misses,
        blocks_read, bytes_read, blocks_written, bytes_written, bad_values, errors, bypassed,
        skipped_writes, promoted, down, write_queue}}."""
        d = super().stats()
        if self._tiers is not None:
            d["tiers"] = self._tiers.stats(d)
        return d

    def flush_tiers(self) -> None:
        """Block until every block queued for the tiers so far is stored (or skipped: a tier
        that is down); a no-op without tiers."""
        if self._tiers is not None:
            self._tiers.flush(self)

    def close_tiers(self) -> None:
        """Stop the tier writer thread (it also stops when the cache is garbage collected)."""
        if self._tiers is not None:
            self._tiers.close()
