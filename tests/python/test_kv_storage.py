"""KvStorage: zero-copy views, their lifetime, slot writes, dtype conversion, argument checks."""

import gc

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv import reference as ref

DTYPES = ["float32", "float16", "bfloat16"]
VIEW_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def make_storage(dtype="float32", **overrides):
    geometry = dict(num_layers=3, num_kv_heads=2, head_dim=5, block_size=4, num_blocks=6)
    geometry.update(overrides)
    return fkv.KvStorage(fkv.CacheConfig(dtype=dtype, **geometry))


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_have_documented_shapes_and_share_the_arena(dtype):
    st = make_storage(dtype)
    whole = st.array()
    assert whole.shape == (6, 3, 2, 2, 4, 5)
    assert whole.dtype == VIEW_DTYPES[dtype]
    assert whole.flags.c_contiguous
    assert whole.ctypes.data % 64 == 0
    assert st.nbytes == whole.nbytes == 6 * st.bytes_per_block
    for layer in range(3):
        k, v = st.key_cache(layer), st.value_cache(layer)
        assert k.shape == v.shape == (6, 2, 4, 5)
        assert np.shares_memory(k, whole) and np.shares_memory(v, whole)
        assert not np.shares_memory(k, v)
        np.testing.assert_array_equal(k, whole[:, layer, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_slot_rounds_like_the_reference_and_is_visible_in_views(dtype):
    rng = np.random.default_rng(0)
    st = make_storage(dtype)
    k = rng.standard_normal((2, 5)).astype(np.float32) * 10
    v = rng.standard_normal((2, 5)).astype(np.float32) * 10
    st.write_slot(4, 1, 3, k, v)
    k_read, v_read = st.read_slot(4, 1, 3)
    assert k_read.dtype == VIEW_DTYPES[dtype] and k_read.shape == (2, 5)
    np.testing.assert_array_equal(ref.storage_to_float32(k_read, dtype), ref.round_to_storage(k, dtype))
    np.testing.assert_array_equal(ref.storage_to_float32(v_read, dtype), ref.round_to_storage(v, dtype))
    np.testing.assert_array_equal(st.key_cache(1)[4, :, 3], k_read)
    np.testing.assert_array_equal(st.value_cache(1)[4, :, 3], v_read)
    assert not np.shares_memory(k_read, st.array())  # read_slot copies


def test_float16_rounding_matches_numpy_on_edge_values():
    st = make_storage("float16", num_kv_heads=1, head_dim=8)
    k = np.array([65519, 65520, 1e-8, -6e-8, 2.0**-24 * 1.5, 1 + 2.0**-11, np.inf, -0.0], np.float32)[None]
    st.write_slot(0, 0, 0, k, k)
    with np.errstate(over="ignore"):  # 65520 overflows to inf, as intended
        expected = k.astype(np.float16)
    np.testing.assert_array_equal(st.read_slot(0, 0, 0)[0], expected)


def test_bfloat16_rounding_matches_the_numpy_reference_on_random_bits():
    rng = np.random.default_rng(1)
    st = make_storage("bfloat16", num_kv_heads=4, head_dim=64)
    bits = rng.integers(0, 2**32, size=(4, 64), dtype=np.uint64).astype(np.uint32)
    k = bits.view(np.float32)
    k = np.where(np.isnan(k), np.float32(1.5), k).astype(np.float32)
    st.write_slot(2, 0, 1, k, -k)
    k_read, v_read = st.read_slot(2, 0, 1)
    np.testing.assert_array_equal(k_read, ref.float32_to_bfloat16_bits(k))
    np.testing.assert_array_equal(v_read, ref.float32_to_bfloat16_bits(-k))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_write_slot_in_storage_dtype_copies_bits(dtype):
    st = make_storage(dtype)
    k = np.arange(10, dtype=VIEW_DTYPES[dtype]).reshape(2, 5) + 1
    st.write_slot(0, 0, 0, k, k)
    np.testing.assert_array_equal(st.read_slot(0, 0, 0)[1], k)


def test_writes_through_a_view_are_visible_to_read_slot():
    st = make_storage()
    st.value_cache(2)[5, 1, 0, :] = np.arange(5, dtype=np.float32) + 0.5
    k, v = st.read_slot(5, 2, 0)
    np.testing.assert_array_equal(v[1], np.arange(5, dtype=np.float32) + 0.5)
    assert not k.any()


def test_views_outlive_the_storage_object():
    st = make_storage()
    view = st.key_cache(1)
    whole = st.array()
    st.write_slot(3, 1, 2, np.full((2, 5), 7, np.float32), np.zeros((2, 5), np.float32))
    del st
    gc.collect()
    assert (view[3, :, 2] == 7).all()
    view[0, 0, 0, 0] = 3.0  # still writable memory we own
    assert whole[0, 1, 0, 0, 0, 0] == 3.0
    assert view.base is not None


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda st, k: st.write_slot(6, 0, 0, k, k), IndexError),
        (lambda st, k: st.write_slot(-1, 0, 0, k, k), IndexError),
        (lambda st, k: st.write_slot(0, 3, 0, k, k), IndexError),
        (lambda st, k: st.write_slot(0, 0, 4, k, k), IndexError),
        (lambda st, k: st.write_slot(0, 0, 0, k[:1], k), ValueError),
        (lambda st, k: st.write_slot(0, 0, 0, k.T.copy(), k), ValueError),
        (lambda st, k: st.write_slot(0, 0, 0, np.ones((2, 10), np.float32)[:, ::2], k), ValueError),
        (lambda st, k: st.write_slot(0, 0, 0, k.astype(np.float64), k), ValueError),
        (lambda st, k: st.write_slot(0, 0, 0, k.astype(np.float16), k), ValueError),
        (lambda st, k: st.write_slot(0, 0, 0, k, "not an array"), TypeError),
        (lambda st, k: st.read_slot(0, 0, 9), IndexError),
        (lambda st, k: st.key_cache(3), IndexError),
        (lambda st, k: st.value_cache(-1), IndexError),
    ],
)
def test_bad_arguments_raise_typed_errors_and_write_nothing(call, error):
    st = make_storage()
    k = np.full((2, 5), np.nan, np.float32)
    before = st.array().copy()
    with pytest.raises(error):
        call(st, k)
    np.testing.assert_array_equal(st.array(), before)


def test_nan_and_inf_are_stored_as_data():
    st = make_storage()
    k = np.full((2, 5), np.nan, np.float32)
    v = np.full((2, 5), -np.inf, np.float32)
    st.write_slot(1, 1, 1, k, v)
    k_read, v_read = st.read_slot(1, 1, 1)
    assert np.isnan(k_read).all() and np.isneginf(v_read).all()
