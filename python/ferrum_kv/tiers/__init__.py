"""Storage tiers for the prefix cache: K/V blocks kept beyond one process's memory.

A cache built with tiers (``ferrum_kv.PagedKvCache(cfg, tiers=[...], model_id=...)``) writes each
block it publishes to every tier in the background, and ``add_sequence`` loads the blocks after
its device hits from the tiers, fastest first. Blocks are stored under their public SHA-256 chain
hash (``ferrum_kv.block_hashes``, namespace included) and a fingerprint of the model and the cache
geometry, so two processes with the same model and tokens find each other's blocks. The key and
value format is in docs/tiers.md.

``DiskTier`` keeps values as files in a directory (local or shared); ``RedisTier`` in a Redis (or
Valkey) server or Redis Cluster (``pip install ferrum-kv[redis]``). ``Tier`` is the interface a
new backend implements. Importing this package does not import redis.
"""

from ferrum_kv.tiers.base import Tier
from ferrum_kv.tiers.disk import DiskTier
from ferrum_kv.tiers.redis_tier import RedisTier

__all__ = ["DiskTier", "RedisTier", "Tier"]
