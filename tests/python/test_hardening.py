"""Regressions of the hardening issue (16): arrays read once, fork-safe kernels, a pressure
callback that does not leak its cache, masked keys that add nothing, no overflow, bounded thread
counts, aliasing defined, uninitialised objects refused, strict argument types.

Each test failed (or crashed the interpreter) on the code before the fix. Tests that could crash
run their body in a child interpreter, so a crash is a failure and not the end of the run.
"""

import gc
import os
import subprocess
import sys
import textwrap
import weakref
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import ferrum_kv as fkv
import ferrum_kv._core as core
from ferrum_kv import reference as ref

FAST_ISAS = [isa for isa in core.attention_isas() if isa != "reference"]


def run_child(source, timeout=120):
    """Runs source in a new interpreter; returns its completed process (crashes show as rc < 0)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True,
                          text=True, timeout=timeout)


def small_config(**overrides):
    fields = dict(num_layers=1, num_kv_heads=2, head_dim=16, block_size=4, num_blocks=16)
    fields.update(overrides)
    return fkv.CacheConfig(**fields)


# 1. Arrays validated, then read again without the GIL.

RACE_PRELUDE = """
    import threading, time
    import numpy as np
    import ferrum_kv as fkv, ferrum_kv._core as core
    stop = threading.Event()
    def flip(array, index, bad):
        good = array[index]
        while not stop.is_set():
            array[index] = bad
            array[index] = good
    def race(array, index, bad, call, seconds=1.0):
        thread = threading.Thread(target=flip, args=(array, index, bad))
        thread.start()
        end = time.perf_counter() + seconds
        calls = errors = 0
        try:
            while time.perf_counter() < end:
                calls += 1
                try:
                    call()
                except (IndexError, ValueError):
                    errors += 1
        finally:
            stop.set()
            thread.join()
        print(calls, errors)
"""


def test_write_kv_uses_the_slots_it_validated():
    result = run_child(RACE_PRELUDE + """
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=16, block_size=4, num_blocks=64)
    cache = fkv.PagedKvCache(cfg)
    cache.add_sequence(0, np.arange(256))
    slots = cache.slot_mapping(0, 0, 256)
    k = np.ones((256, 2, 16), np.float32)
    race(slots, -1, 10**9, lambda: cache.write_kv(0, slots, k, k))
    cache.check_invariants()
    """)
    assert result.returncode == 0, result.stderr[-2000:]


def test_decode_uses_the_block_tables_it_validated():
    result = run_child(RACE_PRELUDE + """
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=16, block_size=4, num_blocks=64)
    storage = core.KvStorage(cfg)
    tables = np.arange(64, dtype=np.int32).reshape(1, 64)
    lens = np.array([256], np.int32)
    q = np.ones((1, 2, 16), np.float32)
    race(tables, (0, 63), 10**9, lambda: core.paged_attention_decode_tables(q, storage, 0, tables, lens))
    """)
    assert result.returncode == 0, result.stderr[-2000:]


def test_add_sequence_stores_the_tokens_it_validated():
    result = run_child(RACE_PRELUDE + """
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=1, block_size=256,
                          num_blocks=1024)
    cache = fkv.PagedKvCache(cfg)
    tokens = np.arange(1, 200_001, dtype=np.int32)  # validated first to last, then stored
    stored = []
    def add():
        cache.add_sequence(1, tokens)
        stored.append(cache.tokens(1).min())
        cache.free_sequence(1)
    race(tokens, 0, -5, add)
    assert min(stored) >= 0, min(stored)
    cache.check_invariants()
    """)
    assert result.returncode == 0, result.stderr[-2000:]


# 2. A forked child runs attention.

def test_forked_child_runs_multithreaded_attention():
    result = run_child("""
    import os, sys, time
    import numpy as np
    import ferrum_kv._core as core
    cfg = core.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=32, block_size=16, num_blocks=64)
    storage = core.KvStorage(cfg)
    storage.array()[...] = np.random.default_rng(0).standard_normal(storage.array().shape)
    tables = np.arange(64, dtype=np.int32).reshape(2, 32)
    lens = np.array([500, 512], np.int32)
    q = np.random.default_rng(1).standard_normal((2, 4, 32)).astype(np.float32)
    expected = core.paged_attention_decode_tables(q, storage, 0, tables, lens, num_threads=2)
    pid = os.fork()
    if pid == 0:
        out = core.paged_attention_decode_tables(q, storage, 0, tables, lens, num_threads=2)
        os._exit(0 if np.array_equal(out, expected) else 3)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.05)
    os.kill(pid, 9)
    sys.exit("the child hung in paged_attention_decode_tables")
    """)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])


# 3. A pressure callback that refers to its cache.

def test_pressure_callback_referring_to_its_cache_does_not_keep_it_alive():
    class Scheduler:
        def __init__(self):
            self.cache = fkv.PagedKvCache(small_config())
            self.cache.set_pressure_callback(self.on_pressure)

        def on_pressure(self, level):
            pass

    scheduler = Scheduler()
    cache_ref = weakref.ref(scheduler.cache)
    lambda_cache = fkv.PagedKvCache(small_config())
    lambda_cache.set_pressure_callback(lambda level, cache=lambda_cache: None)
    lambda_ref = weakref.ref(lambda_cache)
    del scheduler, lambda_cache
    gc.collect()
    assert cache_ref() is None and lambda_ref() is None


def test_pressure_callback_still_runs_and_can_be_replaced():
    cache = fkv.PagedKvCache(small_config(num_blocks=4, block_size=4))
    levels = []
    cache.set_pressure_callback(lambda level: levels.append(("first", level)))
    cache.set_pressure_callback(lambda level: levels.append(("second", level)))
    gc.collect()
    cache.add_sequence(1, np.arange(16))
    assert levels == [("second", "critical")]
    cache.set_pressure_callback(None)
    cache.free_sequence(1)
    assert len(levels) == 1
    with pytest.raises(TypeError, match="callback must be callable or None"):
        cache.set_pressure_callback(5)


# 4. Prefill: a non-finite V in a later token.

@pytest.mark.parametrize("isa", FAST_ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("group, tokens", [(1, 8), (4, 8), (8, 19)])
@pytest.mark.parametrize("window", [None, 3])
def test_prefill_masked_non_finite_value_contributes_nothing(isa, dtype, group, tokens, window):
    rng = np.random.default_rng(tokens * group)
    head_dim, block_size = 24, 4
    blocks = -(-tokens // block_size)
    cfg = core.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=head_dim,
                           block_size=block_size, num_blocks=blocks, dtype=dtype)
    storage = core.KvStorage(cfg)
    values = rng.standard_normal(storage.array().shape).astype(np.float32)
    values[..., 1, :, :, :] = np.where(values[..., 1, :, :, :] > 3.5, 0.0, values[..., 1, :, :, :])
    last = tokens - 1  # V of the last token (layer 0, every KV head) is +inf
    values[last // block_size, 0, 1, :, last % block_size, :] = np.inf
    storage.array()[...] = (ref.float32_to_bfloat16_bits(values) if dtype == "bfloat16"
                            else values.astype(dtype))
    tables = np.arange(blocks, dtype=np.int32).reshape(1, blocks)
    lens = np.array([tokens], np.int32)
    q = rng.standard_normal((tokens, 2 * group, head_dim)).astype(np.float32)
    out = core.paged_attention_prefill_tables(q, storage, 0, tables, lens, lens, isa=isa,
                                              sliding_window=window)
    expected = ref.paged_attention_prefill_reference(q, storage, 0, tables, lens, lens,
                                                     sliding_window=window)
    assert np.isfinite(out[:last]).all()
    np.testing.assert_allclose(out[:last], expected[:last], rtol=1e-4, atol=1e-5)


# 5. Overflow.

def test_capacity_questions_do_not_overflow():
    cache = fkv.PagedKvCache(small_config())
    assert cache.can_allocate(2**63 - 1) is False
    cache.add_sequence(1, np.arange(3))
    assert cache.can_append(1, 2**63 - 4) is False
    assert cache.can_append(1, 2**63 - 1) is False
    assert cache.can_append(1, 1) is True


def test_block_pool_reference_count_stops_at_int32_max():
    pool = fkv.BlockPool(num_blocks=2)
    (block,) = pool.allocate(1)
    batch = np.full(1 << 24, block, np.int32)
    for _ in range((2**31 - 2) // len(batch)):
        pool.incref(batch)
    pool.incref(np.full(2**31 - 2 - pool.ref_count(block), block, np.int32))
    assert pool.ref_count(block) == 2**31 - 2
    with pytest.raises(ValueError, match="references"):  # a repeated id: undone in full
        pool.incref([block, block])
    assert pool.ref_count(block) == 2**31 - 2
    pool.incref([block])
    with pytest.raises(ValueError, match="references"):
        pool.incref([block])
    assert pool.ref_count(block) == 2**31 - 1
    pool.check_invariants()


# 6. Thread counts.

def test_thread_counts_are_bounded():
    data = np.zeros(1024, np.int64)
    for bad in (2**31 - 1, 1025, -1):
        with pytest.raises(ValueError, match="num_threads must be in"):
            core.memory_read_probe(data, bad)
    storage = core.KvStorage(small_config())
    q = np.ones((1, 2, 16), np.float32)
    tables = np.zeros((1, 1), np.int32)
    with pytest.raises(ValueError, match="num_threads must be in"):
        core.paged_attention_decode_tables(q, storage, 0, tables, np.array([1], np.int32),
                                           num_threads=2**31 - 1)
    assert core.memory_read_probe(np.arange(1000, dtype=np.int64), 7) == sum(range(1000))


def test_default_thread_count_can_be_set():
    previous = fkv.get_num_threads()
    assert 1 <= previous <= 1024
    try:
        fkv.set_num_threads(3)
        assert fkv.get_num_threads() == 3
        for bad in (0, -1, 1025):
            with pytest.raises(ValueError):
                fkv.set_num_threads(bad)
        with pytest.raises(TypeError):
            fkv.set_num_threads(2.0)
        assert fkv.get_num_threads() == 3
    finally:
        fkv.set_num_threads(previous)


# 7. Aliasing.

def test_write_kv_from_a_view_of_the_arena_writes_what_the_view_held():
    cfg = small_config(num_kv_heads=1, block_size=8, num_blocks=4)
    cache = fkv.PagedKvCache(cfg)
    cache.add_sequence(0, np.arange(8))
    rng = np.random.default_rng(0)
    original = rng.standard_normal((8, 1, 16)).astype(np.float32)
    slots = cache.slot_mapping(0, 0, 8)
    cache.write_kv(0, slots, original, original)
    block = cache.block_table(0)[0]
    keys = cache.storage.key_cache(0)[block, 0][:, None, :]  # a view: [8, 1, 16], C-contiguous
    assert np.shares_memory(keys, cache.storage.array())
    cache.write_kv(0, slots[1:], keys[:7], original[:7])  # one slot later, overlapping
    k, _ = cache.gather_kv(0, 0)
    np.testing.assert_array_equal(k[1:], original[:7])
    np.testing.assert_array_equal(k[0], original[0])


def test_attention_out_must_not_be_a_view_of_the_arena():
    cfg = small_config(num_kv_heads=1)
    storage = core.KvStorage(cfg)
    storage.array()[...] = 1.0
    out = storage.array()[0, 0, 0, 0, :1][:, None, :]  # [1, 1, 16] float32 inside the arena
    q = np.ones((1, 1, 16), np.float32)
    tables = np.zeros((1, 1), np.int32)
    with pytest.raises(ValueError, match="out must not be a view of the storage"):
        core.paged_attention_decode_tables(q, storage, 0, tables, np.array([1], np.int32), out=out)
    assert (storage.array() == 1.0).all()


# 8. Objects made without __init__.

@pytest.mark.parametrize("cls, use", [
    (fkv.PagedKvCache, lambda o: o.stats()),
    (fkv.PagedKvCache, lambda o: len(o)),
    (fkv.KvStorage, lambda o: o.array()),
    (fkv.CacheConfig, lambda o: repr(o)),
    (fkv.CacheConfig, lambda o: o.bytes_per_block),
    (fkv.BlockPool, lambda o: repr(o)),
    (fkv.BlockPool, lambda o: o.allocate(1)),
])
def test_objects_made_without_init_are_refused(cls, use):
    obj = cls.__new__(cls)
    with pytest.raises(TypeError, match="not initialized"):
        use(obj)


def test_objects_made_without_init_are_refused_as_arguments():
    storage = core.KvStorage.__new__(core.KvStorage)
    with pytest.raises(TypeError, match="not initialized"):
        core.paged_attention_decode_tables(np.ones((1, 2, 16), np.float32), storage, 0,
                                           np.zeros((1, 1), np.int32), np.array([1], np.int32))
    with pytest.raises(TypeError, match="not initialized"):
        fkv.PagedKvCache(fkv.CacheConfig.__new__(fkv.CacheConfig))


# 10. Silent coercion.

@pytest.mark.parametrize("value", [np.float32(10.5), Decimal(3), Fraction(3, 1), 3.0, "3"])
def test_integer_parameters_refuse_non_integers(value):
    cache = fkv.PagedKvCache(small_config())
    cache.add_sequence(1, np.arange(5))
    calls = [
        lambda: cache.can_allocate(value),
        lambda: cache.can_append(1, value),
        lambda: cache.num_tokens(value),
        lambda: cache.fork(1, value),
        lambda: cache.fork(1, 2, num_tokens=value),
        lambda: cache.mark_computed(1, value),
        lambda: cache.slot_mapping(1, 0, value),
        lambda: cache.storage.key_cache(value),
        lambda: fkv.BlockPool(num_blocks=value),
        lambda: small_config(num_blocks=value),
    ]
    for call in calls:
        with pytest.raises(TypeError):
            call()
    assert cache.num_tokens(1) == 5 and 2 not in cache
    cache.check_invariants()


def test_numpy_integers_are_accepted():
    cache = fkv.PagedKvCache(small_config())
    cache.add_sequence(np.int64(1), np.arange(5))
    cache.fork(np.int32(1), np.uint8(2))
    assert cache.num_tokens(np.int16(2)) == 5


@pytest.mark.parametrize("field, value", [
    ("dtype", b"float32"), ("eviction_policy", b"lru"), ("enable_prefix_caching", 2),
    ("enable_kv_events", "yes"),
])
def test_config_refuses_look_alike_types(field, value):
    with pytest.raises(TypeError):
        small_config(**{field: value})


def test_strings_with_embedded_nul_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        small_config(dtype="float32\x00junk")
    storage = core.KvStorage(small_config())
    with pytest.raises(ValueError, match="unknown attention kernel"):
        core.paged_attention_decode_tables(np.ones((1, 2, 16), np.float32), storage, 0,
                                           np.zeros((1, 1), np.int32), np.array([1], np.int32),
                                           isa="avx512\x00junk")


def test_complex_logits_are_refused():
    cache = fkv.PagedKvCache(small_config(enable_prefix_caching=True, max_prompt_logits=2))
    cache.add_sequence(1, np.arange(5))
    cache.mark_computed(1, 5)
    with pytest.raises(TypeError, match="real numbers"):
        cache.store_logits(1, np.ones(8, np.complex64))
    cache.store_logits(1, np.ones(8, np.float64))  # real dtypes are converted to float32


def test_negative_block_counts_raise_in_both_classes():
    with pytest.raises(ValueError):
        fkv.BlockPool(num_blocks=4).can_allocate(-1)
    with pytest.raises(ValueError):
        fkv.PagedKvCache(small_config()).can_allocate(-1)


# The arena is checked against the memory available before it is touched.

def test_arena_larger_than_memory_raises_memory_error_with_sizes():
    config = fkv.CacheConfig(num_layers=64, num_kv_heads=8, head_dim=128, block_size=16,
                             num_blocks=1 << 20)  # 8 TiB of K/V
    with pytest.raises(MemoryError, match="does not fit in the .* bytes .* of memory available"):
        fkv.PagedKvCache(config)


# Issue 17, item 5: wrong argument types.

def test_wrong_array_types_raise_a_short_type_error_naming_the_parameter():
    cache = fkv.PagedKvCache(small_config())
    cache.add_sequence(1, np.arange(4))
    slots = cache.slot_mapping(1, 0, 4)
    good = np.zeros((4, 2, 16), np.float32)
    q = np.zeros((1, 2, 16), np.float32)
    tables, lens = np.zeros((1, 1), np.int32), np.ones(1, np.int32)
    calls = {
        "k": lambda: cache.write_kv(0, slots, good.tolist(), good),
        "v": lambda: cache.write_kv(0, slots, good, "v"),
        "q": lambda: core.paged_attention_decode_tables(q.tolist(), cache.storage, 0, tables, lens),
        "block_tables": lambda: core.paged_attention_decode_tables(q, cache.storage, 0, [[0]], lens),
        "out": lambda: core.paged_attention_decode_tables(q, cache.storage, 0, tables, lens,
                                                          out=[0.0]),
        "query_lens": lambda: core.paged_attention_prefill_tables(q, cache.storage, 0, tables,
                                                                  lens, 1),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"{name} must be a numpy.ndarray, got "), message
        assert len(message) < 80 and "Invoked with" not in message


def test_dtype_error_names_float32_once_for_float32_storage():
    cache = fkv.PagedKvCache(small_config())
    cache.add_sequence(1, np.arange(4))
    k = np.zeros((4, 2, 16), np.float64)
    with pytest.raises(ValueError, match=r"^k must have dtype float32, got float64$"):
        cache.write_kv(0, cache.slot_mapping(1, 0, 4), k, k)
    bf16 = fkv.PagedKvCache(small_config(dtype="bfloat16"))
    bf16.add_sequence(1, np.arange(4))
    with pytest.raises(ValueError, match=r"float32 or uint16 \(the storage dtype bfloat16\)"):
        bf16.write_kv(0, bf16.slot_mapping(1, 0, 4), k, k)


def test_write_slot_from_a_view_of_the_arena_writes_what_the_view_held():
    storage = core.KvStorage(small_config(num_kv_heads=1))
    rng = np.random.default_rng(1)
    storage.array()[...] = rng.standard_normal(storage.array().shape)
    old_k = storage.key_cache(0)[2, :, 1, :].copy()  # [1, 16]: block 2, offset 1
    new_k = rng.standard_normal((1, 16)).astype(np.float32)
    view = storage.key_cache(0)[2, :, 1, :]  # the slot being written, as V
    assert np.shares_memory(view, storage.array()) and view.flags.c_contiguous
    storage.write_slot(2, 0, 1, new_k, view)
    k, v = storage.read_slot(2, 0, 1)
    np.testing.assert_array_equal(k, new_k)
    np.testing.assert_array_equal(v, old_k)
