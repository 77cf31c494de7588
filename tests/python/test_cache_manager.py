"""PagedKvCache: the boundary contract, copy-on-write, swap, batch metadata, pressure, threads."""

import gc
import sys
import threading

import numpy as np
import pytest

import ferrum_kv as fkv


def make_cache(num_blocks=16, num_host_blocks=8, dtype="float32", **kw):
    cfg = fkv.CacheConfig(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4,
                          num_blocks=num_blocks, num_host_blocks=num_host_blocks, dtype=dtype, **kw)
    return fkv.PagedKvCache(cfg)


def state(cache, seq_ids):
    """Every observable that a failed call must leave unchanged."""
    stats = cache.stats()
    for counter in ("allocation_failures",):
        stats.pop(counter)
    tables = {s: (cache.block_table(s).tolist(), cache.tokens(s).tolist(), cache.is_swapped(s))
              for s in seq_ids if s in cache}
    return stats, tables, cache.memory_pressure


def fill(cache, seq_id, rng):
    """Write random K/V for every token of a resident sequence; return them per layer."""
    n = cache.num_tokens(seq_id)
    slots = cache.slot_mapping(seq_id, 0, n)
    data = []
    for layer in range(cache.config.num_layers):
        k = rng.standard_normal((n, 2, 4)).astype(np.float32)
        v = rng.standard_normal((n, 2, 4)).astype(np.float32)
        cache.write_kv(layer, slots, k, v)
        data.append((k, v))
    return data


def test_add_append_and_tables():
    cache = make_cache()
    assert cache.add_sequence(7, np.arange(6)) == 0
    assert cache.num_tokens(7) == 6 and cache.block_table(7).tolist() == [0, 1]
    cache.append_tokens(7, [6, 7])  # fills block 1, no new block
    assert cache.block_table(7).tolist() == [0, 1]
    cache.append_tokens(7, [8])
    assert cache.block_table(7).tolist() == [0, 1, 2]
    assert cache.tokens(7).tolist() == list(range(9))
    assert cache.slot_mapping(7, 3, 9).tolist() == [3, 4, 5, 6, 7, 8]
    cache.check_invariants()
    cache.free_sequence(7)
    assert 7 not in cache and cache.stats()["free_blocks"] == 16
    cache.check_invariants()


def test_batch_metadata_matches_tables():
    cache = make_cache(num_blocks=32)
    lengths = {3: 1, 1: 4, 9: 5, 4: 13}
    for seq_id, n in lengths.items():
        cache.add_sequence(seq_id, np.arange(n))
    ids = [9, 3, 4, 1, 9]
    m = cache.batch_metadata(ids)
    tables = [cache.block_table(s).tolist() for s in ids]
    max_blocks = max(len(t) for t in tables)
    assert m.block_tables.shape == (5, max_blocks) and m.block_tables.dtype == np.int32
    for i, (s, t) in enumerate(zip(ids, tables)):
        assert m.block_tables[i].tolist() == t + [-1] * (max_blocks - len(t))
        assert m.context_lens[i] == lengths[s]
        assert m.indices[m.indptr[i]:m.indptr[i + 1]].tolist() == t
        assert m.last_block_len[i] == lengths[s] - 4 * (len(t) - 1)
        assert 0 < m.last_block_len[i] <= 4
        assert m.slot_mapping[i] == cache.slot_mapping(s, lengths[s] - 1, lengths[s])[0]
    assert m.indptr[0] == 0 and m.indptr[-1] == len(m.indices)
    empty = cache.batch_metadata([])
    assert empty.block_tables.shape == (0, 0) and empty.indptr.tolist() == [0]


def test_fork_of_a_prefix_shares_its_blocks_and_appends_its_own():
    rng = np.random.default_rng(1)
    cache = make_cache()
    cache.add_sequence(1, np.arange(10))  # blocks of 4: two full, one half full
    parent_data = fill(cache, 1, rng)
    cache.mark_computed(1, 6)
    for bad in (0, -1, 11):
        with pytest.raises(ValueError, match="1 to 10 leading tokens"):
            cache.fork(1, 2, num_tokens=bad)
    with pytest.raises(TypeError):
        cache.fork(1, 2, num_tokens=4.0)
    with pytest.raises(TypeError):
        cache.fork(1, 2, 4)  # keyword only
    with pytest.raises(KeyError):
        cache.fork(7, 2, num_tokens=4)
    cache.add_sequence(9, np.arange(3))
    with pytest.raises(ValueError, match="already exists"):
        cache.fork(1, 9, num_tokens=4)
    cache.swap_out(9)
    with pytest.raises(fkv.InvalidStateError, match="swapped out"):
        cache.fork(9, 2, num_tokens=2)
    cache.free_sequence(9)
    assert 2 not in cache
    cache.check_invariants()

    cache.fork(1, 2, num_tokens=8)
    cache.check_invariants()
    assert cache.tokens(2).tolist() == list(range(8))
    assert cache.block_table(2).tolist() == cache.block_table(1)[:2].tolist()
    assert cache.num_computed(2) == 6
    cache.append_tokens(2, [100, 101])
    assert cache.stats()["cow_copies"] == 0 and cache.block_table(2)[2] != cache.block_table(1)[2]
    child_k = rng.standard_normal((2, 2, 4)).astype(np.float32)
    cache.write_kv(0, cache.slot_mapping(2, 8, 10), child_k, -child_k)
    k1, _ = cache.gather_kv(1, 0)
    k2, v2 = cache.gather_kv(2, 0)
    np.testing.assert_array_equal(k2[:8], parent_data[0][0][:8])
    np.testing.assert_array_equal(k2[8:], child_k)
    np.testing.assert_array_equal(v2[8:], -child_k)
    np.testing.assert_array_equal(k1, parent_data[0][0])  # the parent's own tail untouched

    cache.fork(1, 3, num_tokens=5)  # ends inside a block the parent holds full
    cache.append_tokens(3, [200])
    assert cache.stats()["cow_copies"] == 1
    np.testing.assert_array_equal(cache.gather_kv(3, 1)[1][:5], parent_data[1][1][:5])
    for seq_id in (1, 2, 3):
        cache.free_sequence(seq_id)
        cache.check_invariants()
    assert cache.stats()["free_blocks"] == cache.stats()["num_blocks"]


def test_fork_of_a_prefix_with_prefix_caching_republishes_and_releases_cached_blocks():
    cache = make_cache(num_host_blocks=0, enable_prefix_caching=True)
    cache.add_sequence(1, np.arange(10))
    fill(cache, 1, np.random.default_rng(2))
    cache.mark_computed(1, 10)  # blocks 0 and 1 published
    cached = cache.stats()["cached_blocks"]
    assert cached == 2
    cache.fork(1, 2, num_tokens=6)  # shorter than what the parent published: republished
    cache.check_invariants()
    assert cache.num_computed(2) == 6 and cache.stats()["cached_blocks"] == cached
    cache.free_sequence(1)  # block 1 stays with the child and the index
    cache.check_invariants()
    evictable = cache.stats()["evictable_blocks"]
    cache.append_tokens(2, [70, 71])  # into block 1, which the index holds too: copied
    cache.check_invariants()
    stats = cache.stats()
    assert stats["cow_copies"] == 1 and stats["evictable_blocks"] == evictable + 1
    k = np.ones((2, 2, 4), np.float32)
    cache.write_kv(0, cache.slot_mapping(2, 6, 8), k, k)
    cache.write_kv(1, cache.slot_mapping(2, 6, 8), k, k)
    cache.mark_computed(2, 8)  # its own block 1 (tokens 4, 5, 70, 71) is published
    assert cache.stats()["cached_blocks"] == cached + 1
    assert cache.cached_prefix_len(np.r_[np.arange(6), 70, 71, 5]) == 8
    cache.free_sequence(2)
    cache.check_invariants()


def test_copy_on_write_fork_diverges():
    rng = np.random.default_rng(0)
    cache = make_cache()
    cache.add_sequence(1, np.arange(6))  # block 0 full, block 1 half full
    parent_data = fill(cache, 1, rng)
    cache.fork(1, 2)
    assert cache.block_table(2).tolist() == cache.block_table(1).tolist()
    assert cache.storage.array()[0].base is not None
    # The child appends into the shared, half-full block: it gets a copy first.
    cache.append_tokens(2, [100])
    assert cache.stats()["cow_copies"] == 1
    t1, t2 = cache.block_table(1), cache.block_table(2)
    assert t1[0] == t2[0] and t1[1] != t2[1]  # full block still shared
    child_k = rng.standard_normal((1, 2, 4)).astype(np.float32)
    cache.write_kv(0, cache.slot_mapping(2, 6, 7), child_k, child_k)
    # The parent appends too: its block is no longer shared, so it writes in place.
    cache.append_tokens(1, [200])
    assert cache.stats()["cow_copies"] == 1 and cache.block_table(1)[1] == t1[1]
    parent_k = rng.standard_normal((1, 2, 4)).astype(np.float32)
    cache.write_kv(0, cache.slot_mapping(1, 6, 7), parent_k, parent_k)
    k1, _ = cache.gather_kv(1, 0)
    k2, _ = cache.gather_kv(2, 0)
    np.testing.assert_array_equal(k1[:6], parent_data[0][0])
    np.testing.assert_array_equal(k2[:6], parent_data[0][0])  # copied data, all layers
    np.testing.assert_array_equal(k1[6], parent_k[0])
    np.testing.assert_array_equal(k2[6], child_k[0])
    np.testing.assert_array_equal(cache.gather_kv(2, 1)[1][:6], parent_data[1][1])
    cache.free_sequence(1)
    np.testing.assert_array_equal(cache.gather_kv(2, 0)[0][6], child_k[0])
    cache.check_invariants()


def test_full_shared_blocks_are_not_copied():
    cache = make_cache()
    cache.add_sequence(1, np.arange(8))
    cache.fork(1, 2)
    cache.append_batch([1, 2], [5, 6])
    assert cache.stats()["cow_copies"] == 0
    t1, t2 = cache.block_table(1), cache.block_table(2)
    assert t1[:2].tolist() == t2[:2].tolist() and t1[2] != t2[2]
    cache.check_invariants()


def test_siblings_in_one_batch_copy_only_what_is_needed():
    cache = make_cache(num_blocks=4)
    cache.add_sequence(1, np.arange(5))  # 2 blocks, the second partly filled
    cache.fork(1, 2)
    cache.fork(1, 3)  # 3 holders of the partly filled block; 2 blocks free
    cache.append_batch([1, 2, 3], [9, 9, 9])  # two copies; the third writes in place
    assert cache.stats()["cow_copies"] == 2 and cache.stats()["free_blocks"] == 0
    cache.check_invariants()


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "bfloat16", "int8", "fp8_e4m3", "fp8_e5m2", "int4"])
def test_swap_round_trip_is_bit_exact(dtype):
    rng = np.random.default_rng(1)
    cache = make_cache(dtype=dtype)
    cache.add_sequence(5, np.arange(11))
    fill(cache, 5, rng)
    before = [cache.gather_kv(5, layer) for layer in range(2)]
    cache.add_sequence(6, np.arange(3))  # so that swap-in lands in other blocks
    cache.swap_out(5)
    assert cache.is_swapped(5) and cache.stats()["free_blocks"] == 15
    cache.add_sequence(8, np.arange(9))
    for layer in range(2):  # readable from the host tier too
        np.testing.assert_array_equal(cache.gather_kv(5, layer)[0], before[layer][0])
    cache.swap_in(5)
    assert not cache.is_swapped(5)
    for layer in range(2):
        k, v = cache.gather_kv(5, layer)
        np.testing.assert_array_equal(k.view(np.uint8), before[layer][0].view(np.uint8))
        np.testing.assert_array_equal(v.view(np.uint8), before[layer][1].view(np.uint8))
    stats = cache.stats()
    assert stats["swap_outs"] == stats["swap_ins"] == 1
    assert stats["blocks_swapped_out"] == stats["blocks_swapped_in"] == 3
    cache.check_invariants()


def test_swapped_sequence_rejects_appends_and_writes_metadata():
    cache = make_cache()
    cache.add_sequence(1, [1, 2])
    cache.swap_out(1)
    for call in (lambda: cache.append_tokens(1, [3]), lambda: cache.append_batch([1], [3]),
                 lambda: cache.fork(1, 2), lambda: cache.batch_metadata([1]),
                 lambda: cache.slot_mapping(1, 0, 1), lambda: cache.swap_out(1)):
        with pytest.raises(fkv.InvalidStateError, match="swapped out"):
            call()
    assert cache.can_append(1, 1) is False
    with pytest.raises(fkv.InvalidStateError, match="resident"):
        cache.swap_in(2) if 2 in cache else (cache.swap_in(1), cache.swap_in(1))
    cache.check_invariants()


def test_swap_without_host_tier_is_out_of_blocks():
    cache = make_cache(num_host_blocks=0)
    cache.add_sequence(1, [1, 2])
    assert cache.host_storage is None
    with pytest.raises(fkv.OutOfBlocksError, match="no host tier"):
        cache.swap_out(1)
    assert not cache.is_swapped(1)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.add_sequence(10, np.arange(40)),
        lambda c: c.append_tokens(1, np.arange(40)),
        lambda c: c.append_batch([1, 2, 3, 4], [1, 1, 1, 1]),
        lambda c: c.swap_out(4),
        lambda c: c.swap_in(5),
    ],
)
def test_out_of_blocks_leaves_everything_unchanged(call):
    cache = make_cache(num_blocks=10, num_host_blocks=3)
    cache.add_sequence(1, np.arange(4))
    cache.add_sequence(2, np.arange(8))
    cache.fork(2, 3)
    cache.add_sequence(4, np.arange(13))  # 4 blocks: more than the host tier holds
    cache.add_sequence(5, np.arange(9))
    cache.swap_out(5)  # 3 host blocks; the device tier keeps 10 - 1 - 2 - 4 = 3 free
    cache.add_sequence(6, np.arange(5))  # 2 blocks; 1 free
    before = state(cache, range(8))
    failures = cache.stats()["allocation_failures"]
    with pytest.raises(fkv.OutOfBlocksError):
        call(cache)
    assert state(cache, range(8)) == before
    assert cache.stats()["allocation_failures"] == failures + 1
    cache.check_invariants()


def test_can_allocate_and_can_append_predict_without_changing_anything():
    cache = make_cache(num_blocks=4)
    cache.add_sequence(1, np.arange(5))
    before = state(cache, [1])
    assert cache.can_allocate(8) and not cache.can_allocate(9)
    assert cache.can_append(1, 11) and not cache.can_append(1, 12)
    assert state(cache, [1]) == before
    with pytest.raises(ValueError):
        cache.can_allocate(-1)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda c: c.add_sequence(1, [1]), ValueError),  # exists
        (lambda c: c.add_sequence(2, []), ValueError),
        (lambda c: c.add_sequence(2, [1, -5]), ValueError),
        (lambda c: c.add_sequence(2, [1.5]), ValueError),
        (lambda c: c.add_sequence(2, [[1]]), ValueError),
        (lambda c: c.add_sequence(2, [2**40]), IndexError),
        (lambda c: c.add_sequence("x", [1]), TypeError),
        (lambda c: c.append_tokens(9, [1]), KeyError),
        (lambda c: c.append_batch([1, 1], [1, 2]), ValueError),
        (lambda c: c.append_batch([1, 9], [1, 2]), KeyError),
        (lambda c: c.append_batch([1], [1, 2]), ValueError),
        (lambda c: c.fork(9, 3), KeyError),
        (lambda c: c.fork(1, 1), ValueError),
        (lambda c: c.free_sequence(9), KeyError),
        (lambda c: c.swap_out(9), KeyError),
        (lambda c: c.num_tokens(9), KeyError),
        (lambda c: c.block_table(9), KeyError),
        (lambda c: c.mark_computed(1, 6), ValueError),
        (lambda c: c.mark_computed(1, -1), ValueError),
        (lambda c: c.slot_mapping(1, 2, 1), ValueError),
        (lambda c: c.slot_mapping(1, 0, 6), ValueError),
        (lambda c: c.batch_metadata([1, 9]), KeyError),
        (lambda c: c.gather_kv(1, 2), IndexError),
        (lambda c: c.write_kv(0, [0, 64], np.ones((2, 2, 4), np.float32), np.ones((2, 2, 4), np.float32)), IndexError),
        (lambda c: c.write_kv(0, [0, -2], np.ones((2, 2, 4), np.float32), np.ones((2, 2, 4), np.float32)), IndexError),
        (lambda c: c.write_kv(2, [0], np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32)), IndexError),
        (lambda c: c.write_kv(0, [0], np.ones((2, 2, 4), np.float32), np.ones((2, 2, 4), np.float32)), ValueError),
        (lambda c: c.write_kv(0, [0], np.ones((1, 2, 4)), np.ones((1, 2, 4))), ValueError),
        (lambda c: c.write_kv(0, [0], np.ones((1, 4, 2), np.float32), np.ones((1, 4, 2), np.float32)), ValueError),
        (lambda c: c.write_kv(0, [0], np.ones((1, 2, 8), np.float32)[:, :, ::2], np.ones((1, 2, 4), np.float32)), ValueError),
        (lambda c: c.write_kv(0, [0], np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float16)), ValueError),
        (lambda c: c.write_kv(0, [0], None, None), TypeError),
    ],
)
def test_bad_calls_raise_typed_errors_and_change_nothing(call, error):
    cache = make_cache()
    cache.add_sequence(1, np.arange(5))
    before = state(cache, [1, 2, 3])
    data_before = cache.storage.array().copy()
    with pytest.raises(error):
        call(cache)
    assert state(cache, [1, 2, 3]) == before
    np.testing.assert_array_equal(cache.storage.array(), data_before)
    cache.check_invariants()


def test_write_kv_skips_minus_one_and_converts():
    cache = make_cache(dtype="float16")
    cache.add_sequence(1, np.arange(3))
    k = np.full((3, 2, 4), 1 / 3, np.float32)
    cache.write_kv(1, [0, -1, 2], k, -k)
    got_k, got_v = cache.gather_kv(1, 1)
    assert got_k.dtype == np.float16
    np.testing.assert_array_equal(got_k[[0, 2]], k[[0, 2]].astype(np.float16))
    assert not got_k[1].any()
    np.testing.assert_array_equal(got_v[2], (-k[2]).astype(np.float16))


def test_storage_views_share_the_cache_arena_and_outlive_it():
    cache = make_cache()
    cache.add_sequence(1, np.arange(2))
    view = cache.storage.key_cache(1)
    cache.write_kv(1, cache.slot_mapping(1, 0, 2), np.full((2, 2, 4), 5, np.float32),
                   np.zeros((2, 2, 4), np.float32))
    assert (view[0, :, :2] == 5).all()
    assert cache.storage is cache.storage
    del cache
    gc.collect()
    assert (view[0, :, :2] == 5).all()


def test_memory_pressure_levels_and_callback(monkeypatch):
    cache = make_cache(num_blocks=20, high_watermark=0.5, critical_watermark=0.2)
    events = []
    cache.set_pressure_callback(events.append)
    assert cache.memory_pressure == "low"
    cache.add_sequence(1, np.arange(40))  # 10 of 20 used: free 0.5 -> still low
    assert cache.memory_pressure == "low" and events == []
    cache.add_sequence(2, np.arange(4))  # free 9/20 < 0.5
    assert cache.memory_pressure == "high" and events == ["high"]
    cache.add_sequence(3, np.arange(24))  # free 3/20 < 0.2
    assert events == ["high", "critical"]
    cache.free_sequence(1)
    assert events == ["high", "critical", "low"]

    def broken(level):
        raise RuntimeError("callback bug")

    cache.set_pressure_callback(broken)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    cache.add_sequence(4, np.arange(28))  # the callback's error is reported, not raised
    assert 4 in cache
    assert len(reported) == 1 and str(reported[0]) == "callback bug"
    cache.set_pressure_callback(None)
    cache.free_sequence(4)
    assert events == ["high", "critical", "low"]


def test_threads_driving_disjoint_sequences():
    cache = make_cache(num_blocks=400, num_host_blocks=100)
    errors = []

    def worker(base):
        try:
            rng = np.random.default_rng(base)
            for i in range(150):
                seq_id = base * 1000 + i
                cache.add_sequence(seq_id, rng.integers(0, 100, 5))
                cache.append_batch([seq_id], [1])
                cache.fork(seq_id, seq_id + 500)
                cache.append_tokens(seq_id + 500, [2, 3])
                if i % 3 == 0:
                    cache.swap_out(seq_id)
                    cache.swap_in(seq_id)
                cache.batch_metadata([seq_id, seq_id + 500])
                cache.free_sequence(seq_id)
                cache.free_sequence(seq_id + 500)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(b,)) for b in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cache.check_invariants()
    assert len(cache) == 0 and cache.stats()["free_blocks"] == 400
