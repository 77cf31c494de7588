"""The interface of a storage tier: a key-value store of tier values (docs/tiers.md)."""

from __future__ import annotations

import abc
from typing import Optional, Sequence, Tuple


class Tier(abc.ABC):
    """A store of tier values (bytes) under string keys, used by one or more caches.

    The cache's tier manager calls these methods from its writer thread and from the threads that
    call ``add_sequence``, concurrently: implementations must be thread-safe. Any exception a
    method raises counts as the tier failing: the manager bypasses the tier for a back-off
    interval (``backoff_initial`` seconds, doubling up to ``backoff_max``) and never lets the
    exception reach the cache's caller. Values are checked by the manager (header, checksum,
    MAC): a tier need not trust its store.

    Attributes
    ----------
    name : str
        Shown in ``cache.stats()["tiers"]``.
    secret : bytes or None
        The shared secret of the keyed MAC (``None``: values are not authenticated).
    """

    name: str = "tier"
    secret: Optional[bytes] = None
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    @abc.abstractmethod
    def exists_many(self, keys: Sequence[str]) -> list:
        """Whether each key holds a value: a list of bool, one per key, in one round trip."""

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> list:
        """The value of each key (bytes) or None where there is none, in one round trip."""

    def get_many_into(self, keys: Sequence[str], buffer: memoryview) -> list:
        """get_many for a reader that lends ``buffer`` (a writable byte memoryview with room for
        the values it expects): a tier may return values as slices of it instead of fresh bytes
        objects (the reader uses them before lending the buffer again). This default returns
        get_many(keys)."""
        return self.get_many(keys)

    @abc.abstractmethod
    def put_many(self, items: Sequence[Tuple[str, memoryview]]) -> int:
        """Store each (key, value); returns how many were stored (a tier may skip values it
        cannot hold). Values are only valid during the call: copy them if kept."""

    @abc.abstractmethod
    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete the values of keys (missing keys are ignored)."""

    def close(self) -> None:
        """Release connections (the tier may be used again afterwards)."""


def check_secret(secret) -> Optional[bytes]:
    """secret as bytes (None or b"" for none); TypeError for anything but bytes."""
    if secret is None:
        return None
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"secret must be bytes or None, got {type(secret).__name__}")
    return bytes(secret) or None
