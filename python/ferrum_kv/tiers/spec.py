"""Tiers named on a command line: ``disk:PATH`` or a Redis URL."""

from __future__ import annotations

from ferrum_kv.tiers.base import Tier


def parse_tier(spec: str) -> Tier:
    """The tier a spec names: ``disk:PATH`` (a DiskTier without capacity limit) or
    ``redis://...`` / ``rediss://...`` (a RedisTier; ``redis+cluster://host:port`` for a Redis
    Cluster). Raises ValueError for anything else."""
    if spec.startswith("disk:") and len(spec) > len("disk:"):
        from ferrum_kv.tiers.disk import DiskTier

        return DiskTier(spec[len("disk:"):])
    if spec.startswith(("redis://", "rediss://", "redis+cluster://")):
        from ferrum_kv.tiers.redis_tier import RedisTier

        if spec.startswith("redis+cluster://"):
            return RedisTier("redis://" + spec[len("redis+cluster://"):], cluster=True)
        return RedisTier(spec)
    raise ValueError(f"a tier is disk:PATH, redis://..., rediss://... or redis+cluster://..., "
                     f"got {spec!r}")
