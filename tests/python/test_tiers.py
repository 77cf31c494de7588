"""Storage tiers (issue 14) with the disk tier and test tiers: the API, keys, integrity, faults,
pins and the bounded write queue. Redis: test_tiers_redis.py."""

import hashlib
import hmac
import os
import pathlib
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv.tiers import DiskTier, RedisTier, Tier
from tier_helpers import DTYPES, block_bytes, check_no_pins, compute, config, tokens


def tier_files(path):
    return sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file())


# API -----------------------------------------------------------------------------------------


def test_import_without_tiers_imports_and_starts_nothing():
    code = (
        "import sys, threading, ferrum_kv as fkv\n"
        "c = fkv.PagedKvCache(fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=8,"
        " block_size=4, num_blocks=8, enable_prefix_caching=True))\n"
        "c.add_sequence(1, [1, 2, 3, 4, 5]); c.flush_tiers()\n"
        "assert 'tiers' not in c.stats()\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('ferrum_kv.tiers')),"
        " threading.active_count())\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.splitlines()[-1].split() == ["[]", "1"]  # (an editable build logs first)


def test_constructor_errors(tmp_path):
    disk = DiskTier(tmp_path)
    plain = config()
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        fkv.PagedKvCache(fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=8, block_size=4,
                                         num_blocks=8), tiers=[disk], model_id="m")
    with pytest.raises(ValueError, match="model_id"):
        fkv.PagedKvCache(plain, tiers=[disk])
    with pytest.raises(ValueError, match="model_id"):
        fkv.PagedKvCache(plain, tiers=[disk], model_id="")
    with pytest.raises(ValueError, match="model_id is for caches with tiers"):
        fkv.PagedKvCache(plain, model_id="m")
    with pytest.raises(TypeError, match=r"tiers\[1\]"):
        fkv.PagedKvCache(plain, tiers=[disk, "redis://x"], model_id="m")
    with pytest.raises(ValueError, match="at least one"):
        fkv.PagedKvCache(plain, tiers=[], model_id="m")
    with pytest.raises(ValueError, match="tier_queue_blocks"):
        fkv.PagedKvCache(plain, tiers=[disk], model_id="m", tier_queue_blocks=0)
    with pytest.raises(ValueError, match="capacity_bytes"):
        DiskTier(tmp_path, capacity_bytes=0)
    with pytest.raises(TypeError, match="capacity_bytes"):
        DiskTier(tmp_path, capacity_bytes=1.5)
    with pytest.raises(TypeError, match="secret"):
        DiskTier(tmp_path, secret="text")
    with pytest.raises(ValueError, match="redis://"):
        RedisTier("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="timeout"):
        RedisTier("redis://127.0.0.1:6379", timeout=0)
    with pytest.raises(ValueError, match="Cluster"):
        RedisTier("unix:///tmp/redis.sock", cluster=True)
    with pytest.raises(TypeError, match="url"):
        RedisTier(b"redis://127.0.0.1")
    # rediss:// and a password in the URL are accepted (no connection until first use).
    assert RedisTier("rediss://:pw@127.0.0.1:6380/1").name == "rediss://127.0.0.1:6380"
    assert tier_files(tmp_path) == []


def test_codec_errors():
    with pytest.raises(ValueError, match="16 bytes"):
        fkv._core.TierCodec(b"short", 100)
    codec = fkv._core.TierCodec(bytes(16), 100)
    with pytest.raises(ValueError, match="32 bytes"):
        codec.seal(b"x", bytes(100))
    with pytest.raises(ValueError, match="payload"):
        codec.seal(bytes(32), bytes(99))
    with pytest.raises(TypeError, match="bytes"):
        codec.open(bytes(32), bytearray(228))
    assert codec.open(bytes(32), b"") == "malformed"


# Sharing, bit-exact --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_caches_share_blocks_through_one_directory_bit_exact(tmp_path, dtype):
    rng = np.random.default_rng(1)
    a = fkv.PagedKvCache(config(dtype), tiers=[DiskTier(tmp_path)], model_id="m")
    prompt = tokens(23)  # five full blocks and three tokens
    hit, data = compute(a, 1, prompt, rng)
    assert hit == 0
    a.flush_tiers()
    check_no_pins(a)
    assert a.stats()["tiers"][f"disk:{tmp_path}"]["blocks_written"] == 5
    assert len(tier_files(tmp_path)) == 5

    b = fkv.PagedKvCache(config(dtype), tiers=[DiskTier(tmp_path)], model_id="m")
    assert b.add_sequence(7, prompt) == 20  # every full block but none with the last token
    b.check_invariants()
    assert np.array_equal(block_bytes(b, b.block_table(7)[:5]), data)
    s = b.stats()
    assert s["prefix_hit_tokens"] == 20 and s["tier_blocks_imported"] == 5
    t = s["tiers"][f"disk:{tmp_path}"]
    assert t["hits"] == 5 and t["blocks_read"] == 5 and t["bad_values"] == 0
    # The loaded blocks are published on the device: a third sequence hits them there.
    assert b.add_sequence(8, prompt) == 20
    assert b.stats()["tiers"][f"disk:{tmp_path}"]["hits"] == 5
    b.free_sequence(7)
    b.free_sequence(8)
    b.flush_tiers()  # nothing to write: loaded blocks are not written back
    assert b.stats()["tiers"][f"disk:{tmp_path}"]["blocks_written"] == 0
    check_no_pins(b)


def test_device_hits_first_then_the_tier(tmp_path):
    rng = np.random.default_rng(2)
    a = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    _, data = compute(a, 1, tokens(33), rng)
    a.flush_tiers()
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert b.add_sequence(1, tokens(13)) == 12  # blocks 0-2 from the tier
    b.free_sequence(1)
    before = b.stats()["tiers"][f"disk:{tmp_path}"]
    assert before["hits"] == 3
    # Blocks 0-2 are on the device now: only blocks 3-7 are looked up and loaded.
    assert b.add_sequence(2, tokens(33)) == 32
    after = b.stats()["tiers"][f"disk:{tmp_path}"]
    assert after["hits"] - before["hits"] == 5 and after["misses"] == before["misses"]
    assert np.array_equal(block_bytes(b, b.block_table(2)[:8]), data[:8])
    b.flush_tiers()  # nothing to write: loaded blocks are not written back
    assert b.stats()["tiers"][f"disk:{tmp_path}"]["blocks_written"] == 0
    b.check_invariants()


def test_add_sequence_with_logits_loads_from_tiers(tmp_path):
    rng = np.random.default_rng(3)
    a = fkv.PagedKvCache(config(max_prompt_logits=4), tiers=[DiskTier(tmp_path)], model_id="m")
    _, data = compute(a, 1, tokens(18), rng)
    a.flush_tiers()
    b = fkv.PagedKvCache(config(max_prompt_logits=4), tiers=[DiskTier(tmp_path)], model_id="m")
    hit, logits = b.add_sequence_with_logits(1, tokens(18))
    assert (hit, logits) == (16, None)
    assert np.array_equal(block_bytes(b, b.block_table(1)[:4]), data[:4])
    b.check_invariants()


CHILD = r"""
import sys, numpy as np, ferrum_kv as fkv
from ferrum_kv.tiers import DiskTier
sys.path.insert(0, sys.argv[2])
from tier_helpers import compute, config
cache = fkv.PagedKvCache(config("bfloat16"), tiers=[DiskTier(sys.argv[1])], model_id="llama")
hit, data = compute(cache, 1, np.arange(1000, 1030, dtype=np.int32), np.random.default_rng(99),
                    namespace=b"tenant")
cache.flush_tiers()
open(sys.argv[3], "wb").write(data.tobytes())
"""


def test_two_processes_share_one_directory(tmp_path):
    out = tmp_path / "written.bin"
    subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "tier"),
                    os.path.dirname(__file__), str(out)], check=True, capture_output=True)
    written = np.frombuffer(out.read_bytes(), dtype=np.uint8)
    cache = fkv.PagedKvCache(config("bfloat16"), tiers=[DiskTier(tmp_path / "tier")],
                             model_id="llama")
    assert cache.add_sequence(1, tokens(30, 1000), namespace=b"tenant") == 28
    got = block_bytes(cache, cache.block_table(1)[:7])
    assert np.array_equal(got.reshape(-1), written)
    cache.check_invariants()


# Isolation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["model_id", "dtype", "namespace", "block_size", "secret"])
def test_incompatible_caches_never_hit(tmp_path, change):
    rng = np.random.default_rng(4)
    a = fkv.PagedKvCache(config("float16"), tiers=[DiskTier(tmp_path)], model_id="m")
    compute(a, 1, tokens(24), rng)
    a.flush_tiers()
    files = tier_files(tmp_path)
    kw = dict(model_id="m")
    cfg = config("float16")
    namespace = b""
    tier = DiskTier(tmp_path)
    if change == "model_id":
        kw["model_id"] = "other"
    elif change == "dtype":
        cfg = config("bfloat16")  # same bytes per block, other meaning
    elif change == "namespace":
        namespace = b"tenant-2"
    elif change == "block_size":
        cfg = config("float16", block_size=8)
    else:
        tier = DiskTier(tmp_path, secret=b"s3cret")
    b = fkv.PagedKvCache(cfg, tiers=[tier], model_id=kw["model_id"])
    assert b.add_sequence(1, tokens(24), namespace=namespace) == 0
    t = b.stats()["tiers"][tier.name]
    assert t["hits"] == 0 and t["bad_values"] == 0  # other keys: not even probed as bad
    assert tier_files(tmp_path) == files  # nothing deleted
    b.check_invariants()


# Integrity -------------------------------------------------------------------------------------


def written_cache(path, n=21, secret=None):
    a = fkv.PagedKvCache(config(), tiers=[DiskTier(path, secret=secret)], model_id="m")
    _, data = compute(a, 1, tokens(n), np.random.default_rng(5))
    a.flush_tiers()
    return a, data


def file_of(cache, path, block_index, n=21, namespace=b""):
    """The file of block block_index of tokens(n) (the key format of docs/tiers.md)."""
    h = fkv.block_hashes(tokens(n), cache.config.block_size, namespace)[block_index]
    slot = cache._tiers._slots[0]
    key = slot.key(h)
    return pathlib.Path(path) / key.replace(":", "_")[-2:] / key.replace(":", "_")


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "empty",
                                    "other_block", "foreign", "append"])
def test_damaged_values_are_misses_counted_and_deleted(tmp_path, damage):
    a, data = written_cache(tmp_path)
    target = file_of(a, tmp_path, 2)
    value = bytearray(target.read_bytes())
    if damage == "flip_payload":
        value[-7] ^= 0x40
    elif damage == "flip_header":
        value[60] ^= 1  # the payload length
    elif damage == "truncate":
        value = value[: len(value) // 2]
    elif damage == "empty":
        value = bytearray()
    elif damage == "other_block":
        value = bytearray(file_of(a, tmp_path, 1).read_bytes())
    elif damage == "foreign":  # a value of another model, renamed into this key
        other = fkv._core.TierCodec(bytes(range(16)), a.config.bytes_per_block)
        h = fkv.block_hashes(tokens(21), 4)[2]
        value = bytearray(other.seal(h, bytes(value[128:])))
    else:
        value += b"x"
    target.write_bytes(bytes(value))
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert b.add_sequence(1, tokens(21)) == 8  # blocks 0 and 1 only
    assert np.array_equal(block_bytes(b, b.block_table(1)[:2]), data[:2])
    t = b.stats()["tiers"][f"disk:{tmp_path}"]
    assert t["bad_values"] == 1 and t["hits"] == 2
    assert not target.exists()
    b.check_invariants()
    # The rest is computed again (block 2's bytes are not the damaged value's).
    b.free_sequence(1)
    assert b.add_sequence(2, tokens(21)) == 8
    b.check_invariants()


@pytest.mark.parametrize("bad_block", [None, 1, 2, 3, 4])
def test_chunked_restore_reads_ahead_and_stops_at_a_bad_value(tmp_path, bad_block):
    """Chunks of 2 blocks (the reader thread reads the next while one is imported): a damaged
    payload in any chunk ends the run there, whatever was read ahead."""
    a, data = written_cache(tmp_path, n=25)  # 6 restorable blocks: 3 chunks
    if bad_block is not None:
        target = file_of(a, tmp_path, bad_block, n=25)
        value = bytearray(target.read_bytes())
        value[200] ^= 1
        target.write_bytes(bytes(value))
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    b._tiers._chunk = 2
    good = 6 if bad_block is None else bad_block
    assert b.add_sequence(1, tokens(25)) == 4 * good
    assert np.array_equal(block_bytes(b, b.block_table(1)[:good]), data[:good])
    t = b.stats()["tiers"][f"disk:{tmp_path}"]
    assert t["hits"] == good and t["bad_values"] == (bad_block is not None)
    b.check_invariants()
    # The buffers are reused by the next restore.
    b.free_sequence(1)
    b.reset_prefix_cache()
    assert b.add_sequence(2, tokens(25)) == 4 * good
    assert np.array_equal(block_bytes(b, b.block_table(2)[:good]), data[:good])
    b.check_invariants()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_restores_in_a_child_made_by_fork(tmp_path):
    """The reader thread of the parent does not exist in a forked child: it starts its own."""
    a, data = written_cache(tmp_path)
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert b.add_sequence(1, tokens(21)) == 20  # the reader thread has started
    b.free_sequence(1)
    b.reset_prefix_cache()
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if the restore works
        ok = (b.add_sequence(2, tokens(21)) == 20
              and np.array_equal(block_bytes(b, b.block_table(2)[:5]), data[:5]))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_disk_get_many_into_reads_into_the_lent_buffer(tmp_path):
    tier = DiskTier(tmp_path)
    values = {f"k{i}": os.urandom(100 + i) for i in range(3)}
    assert tier.put_many([(k, memoryview(v)) for k, v in values.items()]) == 3
    buffer = memoryview(bytearray(250))
    got = tier.get_many_into(["k0", "missing", "k1", "k2"], buffer)
    assert got[1] is None
    assert [bytes(v) for v in (got[0], got[2], got[3])] == list(values.values())
    assert got == tier.get_many(["k0", "missing", "k1", "k2"])
    # k0 and k1 are in the buffer, one after the other; k2 did not fit: a bytes object.
    assert bytes(buffer[:100]) == values["k0"] and bytes(buffer[100:201]) == values["k1"]
    assert isinstance(got[3], bytes)
    # The base class's default returns get_many's values.
    assert Tier.get_many_into(tier, ["k2"], buffer) == [values["k2"]]


def test_import_from_tiers_argument_errors(tmp_path):
    a, _ = written_cache(tmp_path)
    codec = a._tiers._slots[0].codec
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    with pytest.raises(TypeError, match="bytes-like"):
        b._import_from_tiers(tokens(21), b"", 0, ["not bytes"], [codec])
    with pytest.raises(ValueError):
        b._import_from_tiers(tokens(21), b"", 0, [b"x"], [])
    with pytest.raises(ValueError):
        b._import_from_tiers(tokens(21), b"", 5, [b"x"], [codec])  # past the full blocks
    assert b.stats()["cached_blocks"] == 0
    b.check_invariants()


def test_unauthenticated_values_are_refused(tmp_path):
    secret = b"shared by the replicas"
    a, data = written_cache(tmp_path, secret=secret)
    target = file_of(a, tmp_path, 1)
    # A writer with access to the store but not the secret: a well-formed value, right key,
    # right fingerprint and checksum, wrong MAC.
    slot = a._tiers._slots[0]
    forger = fkv._core.TierCodec(slot.codec.fingerprint, a.config.bytes_per_block,
                                 secret=b"a guess")
    h = fkv.block_hashes(tokens(21), 4)[1]
    target.write_bytes(forger.seal(h, bytes(a.config.bytes_per_block)))
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path, secret=secret)], model_id="m")
    assert b.add_sequence(1, tokens(21)) == 4
    assert b.stats()["tiers"][f"disk:{tmp_path}"]["bad_values"] == 1
    assert not target.exists()
    # Without the secret nothing written with it is found (other keys).
    c = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert c.add_sequence(1, tokens(21)) == 0


def test_crash_mid_write_leaves_nothing_that_loads(tmp_path):
    a, _ = written_cache(tmp_path)
    target = file_of(a, tmp_path, 0)
    # A crash after part of a write: the temporary file of a rename that never happened.
    temp = target.parent / ".tmp-12345-deadbeef"
    temp.write_bytes(target.read_bytes()[:1000])
    target.unlink()
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert b.add_sequence(1, tokens(21)) == 0
    assert b.stats()["tiers"][f"disk:{tmp_path}"]["bad_values"] == 0
    # An old one is deleted by the next scan.
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    DiskTier(tmp_path, capacity_bytes=1 << 30)._make_room(1)
    assert not temp.exists()


# Capacity, faults, pins ------------------------------------------------------------------------


def test_full_disk_tier_keeps_its_capacity_least_recently_used_first(tmp_path):
    value_bytes = 128 + config().bytes_per_block
    tier = DiskTier(tmp_path, capacity_bytes=6 * value_bytes)
    a = fkv.PagedKvCache(config(), tiers=[tier], model_id="m")
    rng = np.random.default_rng(6)
    _, first = compute(a, 1, tokens(13, 0), rng)  # 3 blocks
    a.flush_tiers()
    time.sleep(0.05)
    compute(a, 2, tokens(13, 500), rng)  # 3 more: full
    a.flush_tiers()
    time.sleep(0.05)
    # Reading the first prompt's blocks makes them the most recently used.
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert b.add_sequence(1, tokens(13, 0)) == 12
    time.sleep(0.05)
    compute(a, 3, tokens(13, 900), rng)  # 3 more: the second prompt's go
    a.flush_tiers()
    assert tier.used_bytes() <= 6 * value_bytes
    assert tier.evicted >= 3
    c = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    assert c.add_sequence(1, tokens(13, 0)) == 12
    assert np.array_equal(block_bytes(c, c.block_table(1)[:3]), first)
    assert c.add_sequence(2, tokens(13, 500)) == 0
    assert c.add_sequence(3, tokens(13, 900)) == 12
    # A value larger than the whole capacity is skipped.
    tiny = DiskTier(tmp_path / "tiny", capacity_bytes=value_bytes - 1)
    d = fkv.PagedKvCache(config(), tiers=[tiny], model_id="m")
    compute(d, 1, tokens(9), rng)
    d.flush_tiers()
    assert tier_files(tmp_path / "tiny") == []
    check_no_pins(d)


class FlakyTier(Tier):
    """A tier in memory that fails (raises) while `down` is set, and whose writes block while
    `stall` is clear."""

    def __init__(self, name="flaky"):
        self.name = name
        self.values = {}
        self.down = False
        self.stall = threading.Event()
        self.stall.set()
        self.calls = 0
        self.backoff_initial = 0.01
        self.backoff_max = 0.02

    def _enter(self):
        self.calls += 1
        if self.down:
            raise ConnectionError("tier down")

    def exists_many(self, keys):
        self._enter()
        return [k in self.values for k in keys]

    def get_many(self, keys):
        self._enter()
        return [self.values.get(k) for k in keys]

    def put_many(self, items):
        self.stall.wait()
        self._enter()
        for k, v in items:
            self.values[k] = bytes(v)
        return len(items)

    def delete_many(self, keys):
        self._enter()
        for k in keys:
            self.values.pop(k, None)


def test_a_failing_tier_never_fails_a_cache_call_and_recovers(tmp_path):
    flaky = FlakyTier()
    flaky.down = True
    a = fkv.PagedKvCache(config(), tiers=[flaky], model_id="m")
    rng = np.random.default_rng(7)
    for i in range(4):
        compute(a, i, tokens(17, 100 * i), rng)
        a.flush_tiers()
    t = a.stats()["tiers"]["flaky"]
    assert t["errors"] >= 1 and t["skipped_writes"] >= 4 and t["blocks_written"] == 0
    check_no_pins(a)
    # Bypassed while backing off (no call reaches it), tried again after.
    calls = flaky.calls
    a.add_sequence(10, tokens(17, 5000))
    if a.stats()["tiers"]["flaky"]["down"]:
        assert flaky.calls == calls
    flaky.down = False
    time.sleep(0.05)
    _, data = compute(a, 11, tokens(17, 7000), rng)
    a.flush_tiers()
    assert a.stats()["tiers"]["flaky"]["blocks_written"] == 4
    b = fkv.PagedKvCache(config(), tiers=[flaky], model_id="m")
    assert b.add_sequence(1, tokens(17, 7000)) == 16
    assert np.array_equal(block_bytes(b, b.block_table(1)[:4]), data)
    a.free_sequence(10)
    a.flush_tiers()
    check_no_pins(a)


def test_bounded_write_queue_under_a_burst_with_a_stalled_tier():
    flaky = FlakyTier()
    a = fkv.PagedKvCache(config(num_blocks=256), tiers=[flaky], model_id="m",
                         tier_queue_blocks=8)
    flaky.stall.clear()  # the writer thread blocks inside put_many
    rng = np.random.default_rng(8)
    # A burst of 40 sequences x 4 full blocks: the queue takes 8 (pinned), skips the rest; no
    # call waits for the tier (the test would hang).
    for i in range(40):
        compute(a, i, tokens(17, 1000 * i), rng)
    s = a.stats()
    assert s["tier_write_queue"] <= 8
    assert s["tier_writes_queued"] + s["tier_writes_skipped"] == 160
    # At most 8 pinned, plus at most 8 the writer copied out (and unpinned) before it stalled.
    assert s["tier_writes_queued"] <= 16 and s["tier_writes_skipped"] >= 144
    # Pinned blocks are not evictable: at most 8 fewer than cached.
    assert s["cached_blocks"] - s["evictable_blocks"] == s["tier_write_queue"]
    a.check_invariants()
    flaky.stall.set()
    a.flush_tiers()
    check_no_pins(a)
    assert len(flaky.values) == a.stats()["tier_writes_queued"]


def test_writes_race_with_eviction_and_keep_the_published_bytes():
    """The writer copies blocks out while other threads allocate: a pinned block is never
    handed out, so what lands in the tier is what was published."""
    flaky = FlakyTier()
    a = fkv.PagedKvCache(config(num_blocks=24), tiers=[flaky], model_id="m",
                         tier_queue_blocks=6)
    rng = np.random.default_rng(9)
    published = {}
    for i in range(60):
        prompt = tokens(9, 100 * i)
        _, data = compute(a, i, prompt, rng)
        for h, row in zip(fkv.block_hashes(prompt, 4), data):
            published[h] = row.tobytes()
    a.flush_tiers()
    check_no_pins(a)
    slot = a._tiers._slots[0]
    assert flaky.values
    for h, payload in published.items():
        value = flaky.values.get(slot.key(h))
        if value is not None:
            assert slot.codec.open(h, value) == "ok"
            assert value[128:] == payload


def test_promotion_to_a_faster_tier(tmp_path):
    slow = DiskTier(tmp_path / "slow")
    a = fkv.PagedKvCache(config(), tiers=[slow], model_id="m")
    _, data = compute(a, 1, tokens(21), np.random.default_rng(10))
    a.flush_tiers()
    fast = FlakyTier("fast")
    b = fkv.PagedKvCache(config(), tiers=[fast, DiskTier(tmp_path / "slow")], model_id="m")
    assert b.add_sequence(1, tokens(21)) == 20
    b.flush_tiers()
    s = b.stats()["tiers"]
    assert s["fast"]["misses"] == 5 and s["fast"]["promoted"] == 5
    assert s[f"disk:{tmp_path / 'slow'}"]["hits"] == 5
    c = fkv.PagedKvCache(config(), tiers=[fast], model_id="m")
    assert c.add_sequence(1, tokens(21)) == 20
    assert np.array_equal(block_bytes(c, c.block_table(1)[:5]), data)


def test_the_writer_thread_stops_with_the_cache(tmp_path):
    a = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    thread = a._tiers._thread
    assert thread.is_alive() and thread.daemon and thread.name == "ferrum-kv-tier-writer"
    del a  # no cycle holds the cache: its writer stops at once
    thread.join(timeout=10)
    assert not thread.is_alive()
    b = fkv.PagedKvCache(config(), tiers=[DiskTier(tmp_path)], model_id="m")
    b.close_tiers()
    assert not b._tiers._thread.is_alive()


# The documented format, read and written by a program that is not ferrum-kv -----------------


def xxh64(data: bytes) -> int:
    """XXH64 with seed 0, straight from the specification (slow; for small payloads)."""
    p1, p2, p3, p4, p5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                          0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)
    m = (1 << 64) - 1

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & m

    def rnd(acc, lane):
        return (rotl((acc + lane * p2) & m, 31) * p1) & m

    n, i = len(data), 0
    if n >= 32:
        v = [(p1 + p2) & m, p2, 0, (-p1) & m]
        while i + 32 <= n:
            v = [rnd(v[j], struct.unpack_from("<Q", data, i + 8 * j)[0]) for j in range(4)]
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & m
        for lane in v:
            h = ((h ^ rnd(0, lane)) * p1 + p4) & m
    else:
        h = p5
    h = (h + n) & m
    while i + 8 <= n:
        h = (rotl(h ^ rnd(0, struct.unpack_from("<Q", data, i)[0]), 27) * p1 + p4) & m
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ (struct.unpack_from("<I", data, i)[0] * p1 & m), 23) * p2 + p3) & m
        i += 4
    while i < n:
        h = (rotl(h ^ (data[i] * p5 & m), 11) * p1) & m
        i += 1
    h ^= h >> 33
    h = h * p2 & m
    h ^= h >> 29
    h = h * p3 & m
    return h ^ (h >> 32)


def documented_fingerprint(cfg, model_id, mac):
    text = "".join(f"{line}\n" for line in [
        "ferrum-kv tier format 1", f"model_id={model_id}", f"num_layers={cfg.num_layers}",
        f"num_kv_heads={cfg.num_kv_heads}", f"head_dim={cfg.head_dim}",
        f"block_size={cfg.block_size}", f"dtype={cfg.dtype}",
        f"bytes_per_block={cfg.bytes_per_block}", f"mac={mac}"])
    return hashlib.sha256(text.encode()).digest()[:16]


def documented_chain(token_ids, block_size, namespace):
    parent = hashlib.sha256(b"ferrum-kv/v1" + namespace).digest()
    out = []
    for b in range(len(token_ids) // block_size):
        block = token_ids[b * block_size:(b + 1) * block_size]
        parent = hashlib.sha256(parent + struct.pack(f"<{block_size}I", *block)).digest()
        out.append(parent)
    return out


@pytest.mark.parametrize("secret", [None, b"k3y"])
def test_the_documented_format_is_what_is_stored(tmp_path, secret):
    cfg = config("float32")
    mac = "hmac-sha256" if secret else "none"
    fp = documented_fingerprint(cfg, "model-x", mac)
    a = fkv.PagedKvCache(cfg, tiers=[DiskTier(tmp_path, secret=secret)], model_id="model-x")
    ids = list(range(40, 53))  # three full blocks
    _, data = compute(a, 1, np.array(ids, dtype=np.int32), np.random.default_rng(11),
                      namespace=b"ns")
    a.flush_tiers()
    chain = documented_chain(ids, 4, b"ns")
    for b, h in enumerate(chain):
        key = f"fkv1:{fp.hex()}:{h.hex()}"
        name = key.replace(":", "_")
        value = (tmp_path / name[-2:] / name).read_bytes()
        assert value[:4] == b"FKVT"
        version, flags = struct.unpack_from("<HH", value, 4)
        assert (version, flags) == (1, 1 if secret else 0)
        assert value[8:24] == fp and value[24:56] == h
        (length, checksum) = struct.unpack_from("<QQ", value, 56)
        payload = value[128:]
        assert length == len(payload) == cfg.bytes_per_block
        assert payload == data[b].tobytes()
        assert checksum == xxh64(payload)
        assert value[72:96] == bytes(24)
        expected_mac = (hmac.new(secret, value[:96] + payload, hashlib.sha256).digest()
                        if secret else bytes(32))
        assert value[96:128] == expected_mac
    # And a value written by another program loads.
    ids2 = ids[:8] + [999, 998, 997, 996, 5]
    h = documented_chain(ids2, 4, b"ns")[2]
    payload = np.random.default_rng(12).integers(0, 256, cfg.bytes_per_block,
                                                  dtype=np.uint8).tobytes()
    header = (b"FKVT" + struct.pack("<HH", 1, 1 if secret else 0) + fp + h
              + struct.pack("<QQ", len(payload), xxh64(payload)) + bytes(24))
    header += (hmac.new(secret, header + payload, hashlib.sha256).digest() if secret
               else bytes(32))
    key = f"fkv1:{fp.hex()}:{h.hex()}".replace(":", "_")
    (tmp_path / key[-2:]).mkdir(exist_ok=True)
    (tmp_path / key[-2:] / key).write_bytes(header + payload)
    b = fkv.PagedKvCache(cfg, tiers=[DiskTier(tmp_path, secret=secret)], model_id="model-x")
    assert b.add_sequence(1, np.array(ids2, dtype=np.int32), namespace=b"ns") == 12
    assert block_bytes(b, b.block_table(1)[2:3]).tobytes() == payload


@pytest.mark.parametrize("seed", range(3))
def test_random_operations_with_a_flaky_tier_never_leak_pins(seed):
    """Random adds (from a small pool of prompts, so tiers and device both hit), decode steps,
    frees, resets and a tier that fails or stalls at random: the invariants (which count the
    pins) hold after every step, and once flushed nothing is pinned."""
    rng = np.random.default_rng(seed)
    flaky = FlakyTier()
    a = fkv.PagedKvCache(config(num_blocks=48), tiers=[flaky], model_id="m", tier_queue_blocks=6)
    b = fkv.PagedKvCache(config(num_blocks=48), tiers=[flaky], model_id="m", tier_queue_blocks=6)
    prompts = [tokens(int(rng.integers(2, 20)), 1000 * i) for i in range(6)]
    live = {a: [], b: []}
    next_id = 0
    for _ in range(300):
        cache = a if rng.random() < 0.5 else b
        op = rng.integers(0, 6)
        if op == 0:
            flaky.down = bool(rng.random() < 0.3)
        elif op == 1:
            (flaky.stall.clear if rng.random() < 0.3 else flaky.stall.set)()
        elif op == 2 and cache.can_allocate(24):
            cache.add_sequence(next_id, prompts[rng.integers(len(prompts))])
            live[cache].append(next_id)
            next_id += 1
        elif op == 3 and live[cache]:
            seqs = np.array(live[cache])
            if all(cache.can_append(int(s), 1) for s in seqs) and cache.can_allocate(len(seqs)):
                cache.append_batch(seqs, rng.integers(0, 50, len(seqs)))
        elif op == 4 and live[cache]:
            seq = live[cache].pop(int(rng.integers(len(live[cache]))))
            cache.free_sequence(seq, num_computed=cache.num_tokens(seq))
        elif op == 5 and rng.random() < 0.1:
            cache.reset_prefix_cache()
        cache.check_invariants()
    flaky.stall.set()
    flaky.down = False
    for cache in (a, b):
        for seq in live[cache]:
            cache.free_sequence(seq)
        cache.flush_tiers()
        check_no_pins(cache)
    assert a.stats()["tier_writes_queued"] + b.stats()["tier_writes_queued"] > 0
