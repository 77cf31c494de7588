"""DiskTier: tier values as files in a directory, shared by every process that opens it."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Optional, Sequence, Tuple

from ferrum_kv.tiers.base import Tier, check_secret

# Temporary files older than this are left over from a crash mid-write: a scan deletes them.
_STALE_TEMP_SECONDS = 3600.0


def _touch(path: str) -> None:
    """Marks a value file recently used (LRU across processes)."""
    try:
        os.utime(path)
    except OSError:
        pass


class DiskTier(Tier):
    """Tier values as files under ``path``: ``path/<last 2 hex digits of the key>/<key>`` (``:``
    written as ``_``).

    Writes are atomic: a value goes to a temporary file in the same directory and is renamed into
    place, so a reader (in any process) sees a whole value or none; a crash mid-write leaves only
    a temporary file, which never loads and is deleted by a later scan. A value already present
    is not written again (its key names its content).

    Capacity: with ``capacity_bytes``, the tier keeps the bytes of its values at most that, evicting
    the least recently used files first (a read marks a file used by setting its modification
    time, so recency is shared between processes). Each process counts its own writes and
    rescans the directory when its count would pass the capacity, then evicts down to 90 % of it.
    A value larger than the capacity is skipped.

    Parameters
    ----------
    path : str or os.PathLike
        The directory (created if missing).
    capacity_bytes : int or None
        The most bytes of values to keep (None: no limit).
    secret : bytes or None
        Shared secret for the values' keyed MAC (HMAC-SHA256).
    """

    def __init__(self, path, capacity_bytes: Optional[int] = None, *, secret=None):
        if capacity_bytes is not None:
            if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
                raise TypeError(
                    f"capacity_bytes must be an int or None, got {type(capacity_bytes).__name__}")
            if capacity_bytes < 1:
                raise ValueError(f"capacity_bytes must be >= 1, got {capacity_bytes}")
        self.path = os.path.abspath(os.fspath(path))
        self.capacity_bytes = capacity_bytes
        self.secret = check_secret(secret)
        self.name = f"disk:{self.path}"
        os.makedirs(self.path, exist_ok=True)
        self._lock = threading.Lock()
        self._used: Optional[int] = None  # bytes of values, as of the last scan plus own writes
        self.evicted = 0  # files this process deleted for capacity

    def _file(self, key: str) -> str:
        name = key.replace(":", "_").replace("/", "_")
        return os.path.join(self.path, name[-2:], name)

    def exists_many(self, keys: Sequence[str]) -> list:
        return [os.path.exists(self._file(k)) for k in keys]

    def get_many(self, keys: Sequence[str]) -> list:
        values = []
        for key in keys:
            path = self._file(key)
            try:
                with open(path, "rb") as f:
                    values.append(f.read())
            except FileNotFoundError:
                values.append(None)
                continue
            _touch(path)
        return values

    def get_many_into(self, keys: Sequence[str], buffer: memoryview) -> list:
        """Reads each file straight into the next free bytes of buffer (no fresh allocation to
        page-fault); a file larger than the room left is read as bytes (it is not a value the
        reader expects: its check rejects it)."""
        values, offset = [], 0
        for key in keys:
            path = self._file(key)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                values.append(None)
                continue
            try:
                size = os.fstat(fd).st_size
                if offset + size > len(buffer):
                    with os.fdopen(os.dup(fd), "rb") as f:
                        values.append(f.read())
                else:
                    view = buffer[offset:offset + size]
                    done = 0
                    while done < size:  # a short read only if the file shrank meanwhile
                        n = os.readv(fd, [view[done:]])
                        if n == 0:
                            break
                        done += n
                    values.append(view[:done])
                    offset += done
            finally:
                os.close(fd)
            _touch(path)
        return values

    def put_many(self, items: Sequence[Tuple[str, memoryview]]) -> int:
        stored = 0
        for key, value in items:
            path = self._file(key)
            if os.path.exists(path):
                continue
            size = len(value)
            if self.capacity_bytes is not None and size > self.capacity_bytes:
                continue
            self._make_room(size)
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            temp = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
            try:
                with open(temp, "wb") as f:
                    f.write(value)
                os.replace(temp, path)
            except BaseException:
                try:
                    os.unlink(temp)
                except OSError:
                    pass
                raise
            stored += 1
        return stored

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._file(key))
            except FileNotFoundError:
                pass

    def _scan(self) -> list:
        """(mtime, size, path) of every value file; deletes stale temporary files."""
        files = []
        now = time.time()
        for shard in os.scandir(self.path):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.startswith(".tmp-"):
                    if now - st.st_mtime > _STALE_TEMP_SECONDS:
                        try:
                            os.unlink(entry.path)
                        except OSError:
                            pass
                    continue
                files.append((st.st_mtime, st.st_size, entry.path))
        return files

    def _make_room(self, size: int) -> None:
        if self.capacity_bytes is None:
            return
        with self._lock:
            if self._used is None or self._used + size > self.capacity_bytes:
                files = self._scan()
                used = sum(f[1] for f in files)
                if used + size > self.capacity_bytes:
                    target = min(self.capacity_bytes - size, int(self.capacity_bytes * 0.9))
                    for _, file_size, path in sorted(files):
                        if used <= target:
                            break
                        try:
                            os.unlink(path)
                            self.evicted += 1
                        except FileNotFoundError:
                            pass  # another process evicted it
                        used -= file_size
                self._used = used
            self._used += size

    def used_bytes(self) -> int:
        """The bytes of the values in the directory now (a scan)."""
        return sum(f[1] for f in self._scan())
