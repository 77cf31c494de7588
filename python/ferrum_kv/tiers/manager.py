"""TierManager: connects a PagedKvCache to its tiers (docs/tiers.md).

Writes: a background thread takes the blocks the cache queued when it published them
(``_tier_export``: copied out and sealed in C++, without the GIL, then unpinned) and stores them in
every tier that is up. Reads: ``add_sequence`` probes the tiers for the blocks after the device
hits, fastest first, each tier continuing where the one before stopped, reads the leading run in
chunks into reused buffers (a reader thread reads the next chunk while one is imported) and hands
each to the cache (``_import_from_tiers``), which checks every value (``TierCodec``, the payload
as it is copied into the arena) and publishes the good leading run; the cache's add_sequence then
finds it.
Values that fail a check are counted and deleted. Blocks loaded from a slower tier are promoted to
the faster tiers that missed them, by the writer thread.

Faults: every tier call is guarded: an exception counts as an error and makes the tier bypassed
for a back-off interval (doubling up to the tier's backoff_max), after which it is tried again. A
cache call never fails because of a tier.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import weakref

from ferrum_kv import _core
from ferrum_kv.tiers.base import Tier

FORMAT_VERSION = 1
KEY_PREFIX = f"fkv{FORMAT_VERSION}"
# Bytes of values copied out per writer batch, and read and imported per chunk (at least one
# block).
_BATCH_BYTES = 64 << 20
# Promotions waiting for the writer thread: at most this many bytes of values (more are dropped,
# counted in promotions_dropped).
_PROMOTION_QUEUE_BYTES = 256 << 20

_log = logging.getLogger("ferrum_kv.tiers")

# The live managers: their writer threads are stopped before the interpreter finalizes (a daemon
# thread inside a C++ call then would be killed while it waits for the GIL).
_managers: "weakref.WeakSet[TierManager]" = weakref.WeakSet()


@atexit.register
def _stop_writers() -> None:
    for manager in list(_managers):
        manager.close()


def fingerprint(config, model_id: str, authenticated: bool) -> bytes:
    """The 16-byte fingerprint of values compatible with this cache (docs/tiers.md, "Keys")."""
    text = "".join(f"{line}\n" for line in (
        f"ferrum-kv tier format {FORMAT_VERSION}",
        f"model_id={model_id}",
        f"num_layers={config.num_layers}",
        f"num_kv_heads={config.num_kv_heads}",
        f"head_dim={config.head_dim}",
        f"block_size={config.block_size}",
        f"dtype={config.dtype}",
        f"bytes_per_block={config.bytes_per_block}",
        f"mac={'hmac-sha256' if authenticated else 'none'}",
    ))
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class _Slot:
    """One tier as the manager sees it: its codec, key prefix, counters and back-off."""

    COUNTERS = ("hits", "misses", "blocks_read", "bytes_read", "blocks_written", "bytes_written",
                "bad_values", "errors", "bypassed", "skipped_writes", "promoted")

    def __init__(self, tier: Tier, config, model_id: str):
        self.tier = tier
        fp = fingerprint(config, model_id, tier.secret is not None)
        self.codec = _core.TierCodec(fp, config.bytes_per_block, secret=tier.secret or b"")
        self.prefix = f"{KEY_PREFIX}:{fp.hex()}:"
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.down_until = 0.0
        self.backoff = tier.backoff_initial

    def key(self, block_hash: bytes) -> str:
        return self.prefix + block_hash.hex()

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def up(self) -> bool:
        """Whether to try the tier now; counts a bypass otherwise."""
        with self.lock:
            if time.monotonic() >= self.down_until:
                return True
            self.counts["bypassed"] += 1
            return False

    def failed(self, error: BaseException) -> None:
        with self.lock:
            self.counts["errors"] += 1
            self.down_until = time.monotonic() + self.backoff
            delay, self.backoff = self.backoff, min(2 * self.backoff, self.tier.backoff_max)
        _log.warning("tier %s failed (%s: %s); bypassed for %.2f s", self.tier.name,
                     type(error).__name__, error, delay)

    def succeeded(self) -> None:
        with self.lock:
            self.backoff = self.tier.backoff_initial

    def call(self, method, *args):
        """tier.method(*args), or None if the tier is down or fails (counted, backed off)."""
        if not self.up():
            return None
        try:
            result = method(*args)
        except Exception as e:  # any failure of the store: the cache call goes on without it
            self.failed(e)
            return None
        self.succeeded()
        return result

    def stats(self) -> dict:
        with self.lock:
            d = dict(self.counts)
            d["down"] = time.monotonic() < self.down_until
        return d


class TierManager:
    """The tiers of one cache (held by it; holds it only weakly)."""

    def __init__(self, cache, tiers, model_id: str):
        config = cache.config
        self._cache = weakref.ref(cache)
        self._block_size = config.block_size
        self._slots = [_Slot(t, config, model_id) for t in tiers]
        self._batch = max(1, _BATCH_BYTES // self._slots[0].codec.value_bytes)
        self._chunk = self._batch  # blocks read and imported at a time
        self._buffers = threading.local()  # per thread that loads: _read_buffers
        # Reads the tiers for add_sequence, one chunk ahead of the import (_reader_pool).
        self._reader = None
        self._reader_pid = None
        self._reader_lock = threading.Lock()
        self._drain_lock = threading.Lock()  # one writer at a time (thread or flush)
        self._promotions = collections.deque()  # (slot index, block hash, value from a slower tier)
        self._promotion_bytes = 0
        self._promotions_lock = threading.Lock()
        self.promotions_dropped = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        weakref.finalize(cache, self._stop.set)
        weakref.finalize(cache, self._wake.set)
        self._thread = threading.Thread(target=self._run, name="ferrum-kv-tier-writer",
                                        daemon=True)
        self._thread.start()
        _managers.add(self)

    # Writes ------------------------------------------------------------------------------------

    def _run(self) -> None:
        idle = 0.001
        while not self._stop.is_set():
            cache = self._cache()
            if cache is None:
                return
            try:
                done = self._drain_once(cache)
            except Exception:  # a bug, not a tier failure: keep the thread, report it
                _log.exception("tier writer")
                done = 0
            del cache
            if done:
                idle = 0.001
                continue
            self._wake.wait(idle)
            self._wake.clear()
            idle = min(2 * idle, 0.05)

    def _drain_once(self, cache) -> int:
        """Stores one batch of queued blocks and the pending promotions; returns how many."""
        with self._drain_lock:
            slots = self._slots
            hashes, values = cache._tier_export(slots[0].codec, self._batch)
            k = len(hashes)
            if k:
                keys_hash = [bytes(h) for h in hashes]
                for i, slot in enumerate(slots):
                    if i > 0:
                        slot.codec.seal_rows(hashes, values)
                    items = [(slot.key(h), values[j].data) for j, h in enumerate(keys_hash)]
                    stored = slot.call(slot.tier.put_many, items)
                    if stored is None:
                        slot.count("skipped_writes", k)
                    else:
                        slot.count("blocks_written", stored)
                        slot.count("bytes_written", stored * values.shape[1])
            return k + self._promote()

    def _promote(self) -> int:
        with self._promotions_lock:
            pending = list(self._promotions)
            self._promotions.clear()
            self._promotion_bytes = 0
        for index, block_hash, value in pending:
            slot = self._slots[index]
            payload = value[_core.TierCodec.header_bytes:]
            sealed = slot.codec.seal(block_hash, payload)
            if slot.call(slot.tier.put_many, [(slot.key(block_hash), memoryview(sealed))]):
                slot.count("promoted")
                slot.count("blocks_written")
                slot.count("bytes_written", len(sealed))
        return len(pending)

    def flush(self, cache) -> None:
        """Stores everything queued now (blocks and promotions) before returning."""
        while self._drain_once(cache):
            pass

    # Reads -------------------------------------------------------------------------------------

    def add_sequence(self, cache, seq_id, tokens, namespace, priority, with_logits):
        """add_sequence / add_sequence_with_logits after loading the blocks that follow the device
        hits from the tiers."""
        bs = self._block_size
        try:
            n = len(tokens)
            usable = n >= 2 and isinstance(namespace, bytes) and seq_id not in cache
        except TypeError:
            usable = False  # the cache's own call below raises the error
        if usable and (n - 1) // bs >= 1:
            device = cache.cached_prefix_len(tokens, namespace=namespace) // bs
            if device < (n - 1) // bs:
                self._load(cache, tokens, namespace, device)
        if with_logits:
            return _core.PagedKvCache.add_sequence_with_logits(
                cache, seq_id, tokens, namespace=namespace, priority=priority)
        return _core.PagedKvCache.add_sequence(cache, seq_id, tokens, namespace=namespace,
                                               priority=priority)

    def _load(self, cache, tokens, namespace, device) -> None:
        """Publishes the blocks after the device hits (the last token's block excepted) that the
        tiers hold, fastest tier first, each tier continuing where the ones before it stopped.
        Values are read and imported in chunks of about 64 MiB (bounded memory); the reader
        thread reads the next chunk while this one is checked and copied into the arena."""
        from ferrum_kv import block_hashes

        bs = self._block_size
        hashes = block_hashes(tokens[: (len(tokens) - 1) // bs * bs], bs, namespace)[device:]
        done = 0  # of hashes, published
        for index, slot in enumerate(self._slots):
            if done == len(hashes):
                return
            keys = [slot.key(h) for h in hashes[done:]]
            present = slot.call(slot.tier.exists_many, keys)
            if present is None:
                continue
            run = 0
            while run < len(present) and present[run]:
                run += 1
            slot.count("misses", len(keys) - run)
            done += self._load_run(cache, tokens, namespace, device + done, index,
                                   hashes[done:], keys[:run])

    def _load_run(self, cache, tokens, namespace, first_block, index, hashes, keys) -> int:
        """Reads and imports the values of keys (the blocks from first_block on) from slot index
        until one is missing or bad; returns how many blocks were published."""
        slot = self._slots[index]
        starts = range(0, len(keys), self._chunk)
        buffers = self._read_buffers()
        reader = self._reader_pool()

        def read(n):  # chunk n, into buffer n % 2, on the reader thread
            return reader.submit(slot.call, slot.tier.get_many_into,
                                       keys[starts[n]:starts[n] + self._chunk], buffers[n % 2])

        done = 0
        pending = read(0) if starts else None
        try:
            for n in range(len(starts)):
                got, pending = pending.result(), read(n + 1) if n + 1 < len(starts) else None
                if got is None:
                    break
                found = 0
                while found < len(got) and got[found] is not None:  # None: evicted
                    found += 1
                slot.count("misses", len(got) - found)
                if found == 0:
                    break
                imported, statuses = cache._import_from_tiers(
                    tokens, namespace, first_block + done, got[:found], [slot.codec] * found)
                self._account(index, hashes[done:], got, imported, statuses)
                done += imported
                if imported < self._chunk or found < len(got):
                    break
        finally:
            if pending is not None:  # a read ahead that is not needed: its buffer is reused
                pending.result()
        return done

    def _reader_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The reader thread's pool: started on first use, ended when the manager is collected
        (close() leaves it: restores go on), and started again in a child made by fork() (the
        parent's thread does not exist there)."""
        with self._reader_lock:
            if self._reader_pid != os.getpid():
                self._reader = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="ferrum-kv-tier-reader")
                self._reader_pid = os.getpid()
            return self._reader

    def _read_buffers(self) -> tuple:
        """The calling thread's two buffers of one chunk of values each, lent to get_many_into
        (one being read into while the other is imported): reused from one chunk and one call
        to the next, so that reading does not page-fault fresh memory."""
        buffers = getattr(self._buffers, "buffers", None)
        if buffers is None:
            size = self._chunk * self._slots[0].codec.value_bytes
            buffers = self._buffers.buffers = (memoryview(bytearray(size)),
                                               memoryview(bytearray(size)))
        return buffers

    def _account(self, index, hashes, values, imported, statuses) -> None:
        slot = self._slots[index]
        slot.count("hits", imported)
        slot.count("blocks_read", imported)
        slot.count("bytes_read", sum(len(v) for v in values[:imported]))
        if index > 0:
            for i in range(imported):
                self._queue_promotions(index, hashes[i], values[i])
        if statuses and statuses[-1] != "ok":  # the value that stopped the run: never loaded
            bad = len(statuses) - 1
            slot.count("bad_values")
            _log.warning("tier %s: value of block %s is %s; deleted", slot.tier.name,
                         hashes[bad].hex(), statuses[-1])
            slot.call(slot.tier.delete_many, [slot.key(hashes[bad])])

    def _queue_promotions(self, source: int, block_hash: bytes, value: bytes) -> None:
        value = bytes(value)  # a slice of the reader's buffer: copied before it is reused
        with self._promotions_lock:
            for index in range(source):
                if self._promotion_bytes + len(value) > _PROMOTION_QUEUE_BYTES:
                    self.promotions_dropped += 1
                    continue
                self._promotions.append((index, block_hash, value))
                self._promotion_bytes += len(value)
        self._wake.set()

    # Inspection ---------------------------------------------------------------------------------

    def stats(self, cache_stats: dict) -> dict:
        """Per tier: the counters, and the cache's write queue depth."""
        tiers = {}
        for slot in self._slots:
            d = slot.stats()
            d["write_queue"] = cache_stats["tier_write_queue"]
            tiers[slot.tier.name] = d
        return tiers

    def close(self) -> None:
        """Stops the writer thread (queued blocks stay queued; the cache still unpins them when
        it is destroyed)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
