"""RedisTier: tier values in a Redis (or Valkey) server or a Redis Cluster, through redis-py."""

from __future__ import annotations

from typing import Sequence, Tuple
from urllib.parse import urlsplit

from ferrum_kv.tiers.base import Tier, check_secret

# Keys per read round trip and bytes per pipeline of SETs. Reads go in round trips of a few
# values (about 8 MiB for Llama-3-8B blocks): one reply of hundreds of MiB (a whole prompt in one
# pipeline) measured slower than a plain GET loop with redis-py, on loopback, with and without
# hiredis; four values per round trip were close to it (BENCHMARKS.md).
_READ_KEYS = 4
_PIPELINE_BYTES = 64 << 20


class RedisTier(Tier):
    """Tier values as Redis strings, one per block, under their keys (docs/tiers.md).

    Probes are one pipelined round trip of EXISTS; reads are MGETs of 4 keys, one round trip each
    (on a cluster, pipelines of 4 GETs, which redis-py splits by node); writes pipelined SETs. Eviction is left to
    the server (``maxmemory`` and its policy, e.g. ``allkeys-lru``): a value it evicted is a miss.

    The client connects on first use, not in the constructor, so a cache can be built while the
    server is down; every round trip gives up after ``timeout`` seconds (redis-py retries nothing:
    the cache's tier manager backs off instead).

    Parameters
    ----------
    url : str
        ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
        ``unix:///path/to/socket``.
    cluster : bool
        A Redis Cluster: url names any one of its nodes.
    secret : bytes or None
        Shared secret for the values' keyed MAC (HMAC-SHA256): a client without it cannot plant
        values that this cache loads.
    timeout : float
        Seconds for connecting and for each round trip.
    """

    def __init__(self, url: str, cluster: bool = False, secret=None, timeout: float = 1.0):
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
        if cluster and scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP: redis:// or rediss://")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        try:
            import redis  # noqa: F401  (the extra: pip install ferrum-kv[redis])
        except ImportError as e:
            raise ImportError("RedisTier needs redis-py: pip install 'ferrum-kv[redis]'") from e
        self.url = url
        self.cluster = bool(cluster)
        self.secret = check_secret(secret)
        self.timeout = float(timeout)
        parts = urlsplit(url)
        self.name = f"{scheme}://{parts.hostname or parts.path}" + (
            f":{parts.port}" if parts.port else "") + (" (cluster)" if cluster else "")
        self._client = None

    def _connect(self):
        if self._client is not None:
            return self._client
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = dict(socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                       retry=Retry(NoBackoff(), 0))
        if self.cluster:
            from redis.cluster import RedisCluster

            # Raises while no node answers: the manager backs off and we try again later.
            self._client = RedisCluster.from_url(self.url, **options)
        else:
            from redis import Redis

            self._client = Redis.from_url(self.url, **options)
        return self._client

    def _pipeline(self):
        return self._connect().pipeline(transaction=False)

    def _execute(self, pipe) -> list:
        try:
            return pipe.execute()
        except Exception:
            if self.cluster:  # the slot map may be stale: a fresh client on the next call
                self.close()
            raise

    def exists_many(self, keys: Sequence[str]) -> list:
        if not keys:
            return []
        pipe = self._pipeline()
        for key in keys:
            pipe.exists(key)
        return [bool(n) for n in self._execute(pipe)]

    def get_many(self, keys: Sequence[str]) -> list:
        values = []
        for i in range(0, len(keys), _READ_KEYS):
            pipe = self._pipeline()
            if self.cluster:
                for key in keys[i:i + _READ_KEYS]:
                    pipe.get(key)
                values.extend(self._execute(pipe))
            else:
                pipe.mget(keys[i:i + _READ_KEYS])
                values.extend(self._execute(pipe)[0])
        return values

    def put_many(self, items: Sequence[Tuple[str, memoryview]]) -> int:
        pipe, size = self._pipeline(), 0
        for key, value in items:
            pipe.set(key, value)
            size += len(value)
            if size >= _PIPELINE_BYTES:
                self._execute(pipe)
                pipe, size = self._pipeline(), 0
        self._execute(pipe)
        return len(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        pipe = self._pipeline()
        for key in keys:
            pipe.delete(key)
        self._execute(pipe)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a half-initialised cluster client
                pass
