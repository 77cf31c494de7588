"""DLPack both ways (docs/torch.md): every view and returned array goes to torch zero-copy with the
right dtype (bfloat16 as torch.bfloat16), and every array argument takes torch CPU tensors and
other DLPack producers zero-copy. The capsules are read with ctypes structs written here from the
DLPack specification, independently of cpp/bindings/dlpack.h.

torch is optional: the tests that need it are skipped without it, except under
FKV_REQUIRE_TORCH=1 (tests/run_all.sh sets it), where a missing torch fails the run.
"""

import ctypes
import gc
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv import _core as core
from ferrum_kv import reference as ref

if os.environ.get("FKV_REQUIRE_TORCH") == "1":
    import torch
else:
    try:
        import torch
    except ImportError:
        torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (extra [torch])")

DTYPES = ["float32", "float16", "bfloat16"]
VIEW_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
HEADS_KV, GROUP, DIM, BS = 2, 2, 16, 4


# --- DLPack structs (DLPack 1.x, dlpack.h), for reading capsules -------------------------------

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]
READ_ONLY, IS_COPIED = 1, 2
K_DL_BFLOAT, K_DL_FLOAT, K_DL_UINT = 4, 2, 1


def capsule_contents(capsule):
    """(name, flags, DLTensor) of an unconsumed capsule (flags 0 for the legacy layout)."""
    name = _get_name(capsule)
    pointer = _get_pointer(capsule, name)
    if name == b"dltensor_versioned":
        managed = DLManagedTensorVersioned.from_address(pointer)
        assert (managed.major, managed.minor) == (1, 0)
        return name, managed.flags, managed.dl_tensor
    assert name == b"dltensor"
    return name, 0, DLManagedTensor.from_address(pointer).dl_tensor


# --- helpers ----------------------------------------------------------------------------------

def config(dtype, **overrides):
    args = dict(num_layers=2, num_kv_heads=HEADS_KV, head_dim=DIM, block_size=BS, num_blocks=16,
                num_host_blocks=4, dtype=dtype)
    args.update(overrides)
    return fkv.CacheConfig(**args)


def random_storage_values(dtype, shape, rng):
    values = rng.standard_normal(shape).astype(np.float32)
    if dtype == "bfloat16":
        return ref.float32_to_bfloat16_bits(values)
    return values.astype(VIEW_DTYPES[dtype])


def views_of(storage):
    """Every zero-copy view a KvStorage returns, and a strided slice of one."""
    return {"array": storage.array(), "key_cache(1)": storage.key_cache(1),
            "value_cache(0)": storage.value_cache(0),
            "slice": storage.key_cache(0)[1:5, :, ::2, 3:]}


class Producer:
    """A DLPack producer that is not torch: forwards to a NumPy array's own exporter (or to a
    BFloat16Array's). legacy=True refuses max_version, like producers older than DLPack 1.0."""

    def __init__(self, array, legacy=False, device=(1, 0)):
        self.array, self.legacy, self.device = array, legacy, device

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **kwargs):
        if self.legacy and kwargs:
            raise TypeError("__dlpack__() takes no keyword arguments")
        return self.array.__dlpack__(**kwargs)


class CudaClaim:
    """Claims to live on CUDA; exporting it would be a bug of the consumer."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("a non-CPU tensor must be refused before __dlpack__")


def bits(x):
    """A torch tensor's raw bits as a NumPy array (16-bit dtypes as int16), for exact compares."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.view(torch.int16).numpy()
    return x.numpy()


# --- export -----------------------------------------------------------------------------------

def test_import_ferrum_kv_does_not_import_torch():
    code = (
        "import sys, numpy as np, ferrum_kv as fkv\n"
        "cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=8, block_size=4, "
        "num_blocks=4, dtype='bfloat16')\n"
        "cache = fkv.PagedKvCache(cfg)\n"
        "cache.add_sequence(1, [1, 2, 3])\n"
        "view = cache.storage.key_cache(0)\n"
        "capsule = view.__dlpack__(max_version=(1, 0))\n"
        "cache.write_kv(0, cache.slot_mapping(1, 0, 3), np.ones((3, 1, 8), np.float32),"
        " np.ones((3, 1, 8), np.float32))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_tests_without_torch_pass_where_torch_cannot_be_imported():
    """This file's tests that need no torch, in a subprocess where `import torch` fails."""
    code = ("import sys; sys.modules['torch'] = None; import pytest; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {__file__!r}, "
            "'-k', 'not without_torch']))")
    env = {k: v for k, v in os.environ.items() if k != "FKV_REQUIRE_TORCH"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and " skipped" in result.stdout, result.stdout


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_keep_being_numpy_arrays_of_the_documented_dtype(dtype):
    storage = core.KvStorage(config(dtype))
    for name, view in views_of(storage).items():
        assert isinstance(view, np.ndarray), name
        assert view.dtype == VIEW_DTYPES[dtype], name
        assert np.shares_memory(view, storage.array()), name
        assert isinstance(view, core.BFloat16Array) == (dtype == "bfloat16"), name
        view[...] = random_storage_values(dtype, view.shape, np.random.default_rng(0))
        for copy in (pickle.loads(pickle.dumps(view)), view.copy()):
            assert type(copy) is type(view) and not np.shares_memory(copy, view), name
            np.testing.assert_array_equal(copy, view)


@pytest.mark.parametrize("dtype", DTYPES)
def test_capsules_of_views_describe_the_arena_with_the_storage_dtype(dtype):
    storage = core.KvStorage(config(dtype))
    expected = {"float32": (K_DL_FLOAT, 32), "float16": (K_DL_FLOAT, 16),
                "bfloat16": (K_DL_BFLOAT, 16)}[dtype]
    for name, view in views_of(storage).items():
        for max_version, capsule_name in [(None, b"dltensor"), ((1, 0), b"dltensor_versioned"),
                                          ((1, 3), b"dltensor_versioned")]:
            capsule = view.__dlpack__(max_version=max_version)
            got_name, flags, tensor = capsule_contents(capsule)
            assert got_name == capsule_name, name
            assert flags == 0, name
            assert (tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes) == (*expected, 1)
            assert (tensor.device.device_type, tensor.device.device_id) == (1, 0)
            assert tensor.data + tensor.byte_offset == view.ctypes.data, name
            assert [tensor.shape[i] for i in range(tensor.ndim)] == list(view.shape), name
            strides = [tensor.strides[i] * view.itemsize for i in range(tensor.ndim)]
            assert strides == list(view.strides), name
        assert view.__dlpack_device__() == (1, 0)


def test_read_only_views_export_the_read_only_flag_and_copies_the_copied_flag():
    storage = core.KvStorage(config("bfloat16"))
    view = storage.key_cache(0)
    view.flags.writeable = False
    _, flags, tensor = capsule_contents(view.__dlpack__(max_version=(1, 0)))
    assert flags == READ_ONLY and tensor.data == view.ctypes.data
    with pytest.raises(BufferError, match="read-only"):
        view.__dlpack__()  # the legacy capsule cannot say read-only
    _, flags, tensor = capsule_contents(view.__dlpack__(max_version=(1, 0), copy=True))
    assert flags == IS_COPIED and tensor.data != view.ctypes.data
    # float32 views are plain ndarrays: NumPy's own exporter sets the same flag.
    float_view = core.KvStorage(config("float32")).key_cache(0)
    float_view.flags.writeable = False
    assert capsule_contents(float_view.__dlpack__(max_version=(1, 0)))[1] == READ_ONLY
    # A writeable view: no flag; copy=False is zero-copy.
    writeable = storage.value_cache(1)
    _, flags, tensor = capsule_contents(writeable.__dlpack__(max_version=(1, 0), copy=False))
    assert flags == 0 and tensor.data == writeable.ctypes.data


def test_bfloat16_export_refuses_streams_and_other_devices():
    view = core.KvStorage(config("bfloat16")).array()
    with pytest.raises(BufferError, match="stream"):
        view.__dlpack__(stream=1)
    with pytest.raises(BufferError, match="dl_device"):
        view.__dlpack__(dl_device=(2, 0))
    _, _, tensor = capsule_contents(view.__dlpack__(dl_device=(1, 0)))
    assert tensor.data == view.ctypes.data


def test_a_bfloat16_array_viewed_as_another_dtype_exports_as_numpy_does():
    view = core.KvStorage(config("bfloat16")).array()
    as_int16 = view.view(np.int16)
    _, _, tensor = capsule_contents(as_int16.__dlpack__())
    assert (tensor.dtype.code, tensor.dtype.bits) == (0, 16)  # kDLInt, as NumPy's own export


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_views_share_memory_with_the_arena_both_ways(dtype):
    rng = np.random.default_rng(1)
    storage = core.KvStorage(config(dtype))
    for name, view in views_of(storage).items():
        tensor = torch.from_dlpack(view)
        assert tensor.dtype == getattr(torch, TORCH_DTYPES[dtype]), name
        assert tuple(tensor.shape) == view.shape, name
        assert tensor.data_ptr() == view.ctypes.data, name
        # torch -> NumPy: random values written through torch are the view's bits.
        written = torch.randn(tuple(view.shape)).to(tensor.dtype)
        tensor.copy_(written)
        np.testing.assert_array_equal(view.view(np.int16 if view.itemsize == 2 else np.int32),
                                      bits(written).view(np.int16 if view.itemsize == 2 else np.int32))
        # NumPy -> torch.
        values = random_storage_values(dtype, view.shape, rng)
        view[...] = values
        np.testing.assert_array_equal(bits(tensor.clone()).view(values.dtype), values)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_host_storage_and_copies_reach_torch_in_the_storage_dtype(dtype):
    rng = np.random.default_rng(2)
    cache = fkv.PagedKvCache(config(dtype))
    cache.add_sequence(1, np.arange(6))
    kv = [random_storage_values(dtype, (6, HEADS_KV, DIM), rng) for _ in range(2)]
    cache.write_kv(0, cache.slot_mapping(1, 0, 6), *kv)
    expected = getattr(torch, TORCH_DTYPES[dtype])
    host = torch.from_dlpack(cache.host_storage.array())
    assert host.dtype == expected and host.data_ptr() == cache.host_storage.array().ctypes.data
    gathered = cache.gather_kv(1, 0)
    slot = cache.storage.read_slot(int(cache.block_table(1)[1]), 0, 1)  # token 5
    for got, want in [(gathered[0], kv[0]), (gathered[1], kv[1]), (slot[0], kv[0][5]),
                      (slot[1], kv[1][5])]:
        tensor = torch.from_dlpack(got)
        assert tensor.dtype == expected and tensor.data_ptr() == got.ctypes.data
        np.testing.assert_array_equal(bits(tensor).view(want.dtype), want)


@needs_torch
def test_returned_index_arrays_reach_torch_zero_copy():
    cache = fkv.PagedKvCache(config("float32", enable_prefix_caching=True, max_prompt_logits=2))
    cache.add_sequence(1, np.arange(9))
    metadata = cache.batch_metadata([1])
    arrays = [cache.tokens(1), cache.block_table(1), cache.slot_mapping(1, 0, 9),
              metadata.block_tables, metadata.context_lens, metadata.indptr, metadata.indices,
              metadata.last_block_len, metadata.slot_mapping, metadata.num_computed]
    for array in arrays:
        tensor = torch.from_dlpack(array)
        assert tensor.dtype == torch.int32 and tensor.data_ptr() == array.ctypes.data
        np.testing.assert_array_equal(tensor.numpy(), array)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_capsule_and_the_tensor_keep_the_arena_alive(dtype):
    rng = np.random.default_rng(3)
    cache = fkv.PagedKvCache(config(dtype))
    cache.storage.array()[...] = random_storage_values(dtype, cache.storage.array().shape, rng)
    expected = cache.storage.key_cache(1).copy()
    capsule = cache.storage.key_cache(1).__dlpack__(max_version=(1, 0))
    tensor = torch.from_dlpack(cache.storage.array())
    array_copy = cache.storage.array().copy()
    del cache
    gc.collect()
    # Fresh caches of the same size would reuse a freed arena's memory.
    others = [fkv.PagedKvCache(config(dtype)) for _ in range(4)]
    for other in others:
        other.storage.array()[...] = 0
    from_capsule = torch.from_dlpack(capsule)
    np.testing.assert_array_equal(bits(from_capsule).view(expected.dtype), expected)
    np.testing.assert_array_equal(bits(tensor).view(array_copy.dtype), array_copy)


def test_the_capsule_deleter_releases_the_view():
    storage = core.KvStorage(config("bfloat16"))
    view = storage.array()
    before = sys.getrefcount(view)
    capsule = view.__dlpack__(max_version=(1, 0))
    assert sys.getrefcount(view) == before + 1  # the capsule's context holds the view
    del capsule  # unconsumed: its destructor calls the deleter
    assert sys.getrefcount(view) == before


# --- import -----------------------------------------------------------------------------------

def make_pair(dtype, prompt_lens, rng):
    """Two identical caches holding the same sequences (ids 1..), no K/V written yet."""
    caches = [fkv.PagedKvCache(config(dtype, num_blocks=32)) for _ in range(2)]
    for cache in caches:
        rng_copy = np.random.default_rng(rng.integers(1 << 30))
        for i, n in enumerate(prompt_lens):
            cache.add_sequence(i + 1, rng_copy.integers(0, 100, n))
    return caches


def to_torch_storage_dtype(values, dtype):
    """values (float32) as a torch tensor of the storage dtype, and its NumPy equivalent."""
    if dtype == "bfloat16":
        tensor = torch.from_numpy(values).to(torch.bfloat16)
        return tensor, tensor.view(torch.int16).numpy().view(np.uint16)
    tensor = torch.from_numpy(values).to(getattr(torch, dtype))
    return tensor, tensor.numpy()


def through_dlpack(tensor):
    """A torch tensor through the generic DLPack path (torch's __dlpack__), not the .numpy()
    fast path the bindings take for torch.Tensor itself."""
    return Producer(tensor)


def direct(tensor):
    return tensor


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_in_storage_dtype", [False, True])
@pytest.mark.parametrize("wrap", [direct, through_dlpack])
def test_torch_inputs_give_the_numpy_results(dtype, kv_in_storage_dtype, wrap):
    rng = np.random.default_rng(4)
    lens = [5, 9, 1]
    np_cache, torch_cache = make_pair(dtype, lens, rng)
    for layer in range(2):
        for seq_id, n in enumerate(lens, start=1):
            k = rng.standard_normal((n, HEADS_KV, DIM)).astype(np.float32)
            v = rng.standard_normal((n, HEADS_KV, DIM)).astype(np.float32)
            slots = np_cache.slot_mapping(seq_id, 0, n)
            if kv_in_storage_dtype:
                (k_t, k), (v_t, v) = to_torch_storage_dtype(k, dtype), to_torch_storage_dtype(v, dtype)
            else:
                k_t, v_t = torch.from_numpy(k), torch.from_numpy(v)
            np_cache.write_kv(layer, slots, k, v)
            torch_cache.write_kv(layer, wrap(torch.from_numpy(slots).to(torch.int64)), wrap(k_t),
                                 wrap(v_t))
    for seq_id, n in enumerate(lens, start=1):
        np_cache.mark_computed(seq_id, n)
        torch_cache.mark_computed(seq_id, n)
    np.testing.assert_array_equal(torch_cache.storage.array(), np_cache.storage.array())
    for seq_id in (1, 2, 3):
        for a, b in zip(torch_cache.gather_kv(seq_id, 1), np_cache.gather_kv(seq_id, 1)):
            np.testing.assert_array_equal(a, b)

    seq_ids = np.array([1, 2, 3])
    q = rng.standard_normal((3, HEADS_KV * GROUP, DIM)).astype(np.float32)
    expected = fkv.paged_attention_decode(q, np_cache, 1, seq_ids)
    out = torch.full((3, HEADS_KV * GROUP, DIM), float("nan"))
    out_argument = wrap(out)
    returned = fkv.paged_attention_decode(wrap(torch.from_numpy(q)), torch_cache, 1,
                                          wrap(torch.from_numpy(seq_ids)), out=out_argument)
    assert returned is out_argument
    np.testing.assert_array_equal(out.numpy(), expected)

    query_lens = np.array([2, 4, 1], np.int32)
    q = rng.standard_normal((7, HEADS_KV * GROUP, DIM)).astype(np.float32)
    expected = fkv.paged_attention_prefill(q, np_cache, 0, seq_ids, query_lens)
    out = torch.full((7, HEADS_KV * GROUP, DIM), float("nan"))
    out_argument = wrap(out)
    returned = fkv.paged_attention_prefill(wrap(torch.from_numpy(q)), torch_cache, 0,
                                           wrap(torch.tensor(seq_ids)),
                                           wrap(torch.from_numpy(query_lens)), out=out_argument)
    assert returned is out_argument
    np.testing.assert_array_equal(out.numpy(), expected)

    metadata = np_cache.batch_metadata(seq_ids)
    got = core.paged_attention_prefill_tables(
        wrap(torch.from_numpy(q)), torch_cache.storage, 0,
        wrap(torch.from_numpy(metadata.block_tables)), wrap(torch.from_numpy(metadata.context_lens)),
        wrap(torch.from_numpy(query_lens)),
        alibi_slopes=wrap(torch.linspace(0.1, 0.8, HEADS_KV * GROUP)))
    expected = core.paged_attention_prefill_tables(
        q, np_cache.storage, 0, metadata.block_tables, metadata.context_lens, query_lens,
        alibi_slopes=np.linspace(0.1, 0.8, HEADS_KV * GROUP, dtype=np.float32))
    np.testing.assert_array_equal(got, expected)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_slot_takes_torch_tensors(dtype):
    rng = np.random.default_rng(5)
    storages = [core.KvStorage(config(dtype)) for _ in range(2)]
    k = rng.standard_normal((HEADS_KV, DIM)).astype(np.float32)
    k_t, k_np = to_torch_storage_dtype(k, dtype)
    storages[0].write_slot(3, 1, 2, k_np, -k_np if dtype != "bfloat16" else k_np ^ 0x8000)
    storages[1].write_slot(3, 1, 2, k_t, -k_t)
    np.testing.assert_array_equal(storages[1].array(), storages[0].array())
    assert storages[0].array().any()


@needs_torch
def test_integer_arguments_take_torch_tensors_of_any_integer_dtype():
    cache = fkv.PagedKvCache(config("float32", enable_prefix_caching=True))
    for seq_id, dtype in [(1, torch.int64), (2, torch.int32), (3, torch.int16), (4, torch.uint8)]:
        cache.add_sequence(seq_id, torch.arange(1, 9, dtype=dtype))
        np.testing.assert_array_equal(cache.tokens(seq_id), np.arange(1, 9))
    cache.append_batch(torch.tensor([1, 2]), torch.tensor([50, 51], dtype=torch.int32))
    cache.mark_computed_batch(torch.tensor([1, 2]), torch.tensor([8, 8]))
    assert cache.tokens(2)[-1] == 51 and cache.num_computed(1) == 8
    assert fkv.block_hashes(torch.arange(8), 4) == fkv.block_hashes(np.arange(8), 4)
    pool = fkv.BlockPool(num_blocks=8)
    ids = pool.allocate(3)
    pool.free(torch.from_numpy(np.asarray(ids)))
    assert pool.num_free_blocks == 8


def test_numpy_dlpack_producers_give_the_numpy_results():
    """The DLPack path without torch: producers wrapping NumPy arrays (versioned and legacy) and
    a BFloat16Array (bfloat16 through DLPack)."""
    rng = np.random.default_rng(6)
    for dtype in DTYPES:
        for legacy in (False, True):
            np_cache, dl_cache = make_pair(dtype, [6], rng)
            k = random_storage_values(dtype, (6, HEADS_KV, DIM), rng)
            slots = np_cache.slot_mapping(1, 0, 6)
            np_cache.write_kv(0, slots, k, k)
            # bfloat16 through DLPack: gather_kv's copy is a BFloat16Array holding k's bits.
            k_dl = np_cache.gather_kv(1, 0)[0] if dtype == "bfloat16" else k
            assert isinstance(k_dl, core.BFloat16Array) == (dtype == "bfloat16")
            dl_cache.write_kv(0, Producer(slots, legacy), Producer(k_dl, legacy),
                              Producer(k_dl, legacy))
            np.testing.assert_array_equal(dl_cache.storage.array(), np_cache.storage.array())
            np_cache.mark_computed(1, 6)
            dl_cache.mark_computed(1, 6)
            q = rng.standard_normal((1, HEADS_KV * GROUP, DIM)).astype(np.float32)
            expected = fkv.paged_attention_decode(q, np_cache, 0, [1])
            out = np.full_like(q, np.nan)
            out_producer = Producer(out, legacy)
            returned = fkv.paged_attention_decode(Producer(q, legacy), dl_cache, 0,
                                                  Producer(np.array([1]), legacy),
                                                  out=out_producer)
            assert returned is out_producer
            np.testing.assert_array_equal(out, expected)


def test_the_consumed_capsule_releases_the_producer_array():
    cache = fkv.PagedKvCache(config("float32"))
    cache.add_sequence(1, np.arange(3))
    k = np.ones((3, HEADS_KV, DIM), np.float32)
    slots = cache.slot_mapping(1, 0, 3)
    before = sys.getrefcount(k)
    cache.write_kv(0, slots, Producer(k), Producer(k))
    gc.collect()
    assert sys.getrefcount(k) == before


# --- import errors ----------------------------------------------------------------------------

def cache_with_sequence(dtype="float32"):
    cache = fkv.PagedKvCache(config(dtype))
    cache.add_sequence(1, np.arange(4))
    return cache, cache.slot_mapping(1, 0, 4)


def test_tensors_on_another_device_are_refused_before_anything_changes():
    cache, slots = cache_with_sequence()
    k = np.ones((4, HEADS_KV, DIM), np.float32)
    q = np.ones((1, HEADS_KV * GROUP, DIM), np.float32)
    tables, lens = np.zeros((1, 1), np.int32), np.ones(1, np.int32)
    before = cache.storage.array().copy()
    calls = {
        "k": lambda: cache.write_kv(0, slots, CudaClaim(), k),
        "v": lambda: cache.write_kv(0, slots, k, CudaClaim()),
        "slots": lambda: cache.write_kv(0, CudaClaim(), k, k),
        "tokens": lambda: cache.append_tokens(1, CudaClaim()),
        "seq_ids": lambda: cache.batch_metadata(CudaClaim()),
        "q": lambda: core.paged_attention_decode_tables(CudaClaim(), cache.storage, 0, tables, lens),
        "out": lambda: core.paged_attention_decode_tables(q, cache.storage, 0, tables, lens,
                                                          out=CudaClaim()),
        "block_tables": lambda: core.paged_attention_decode_tables(q, cache.storage, 0,
                                                                   CudaClaim(), lens),
        "logits": lambda: cache.store_logits(1, CudaClaim()),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{name} must be a CPU tensor, got one on CUDA:0"):
            call()
    np.testing.assert_array_equal(cache.storage.array(), before)
    assert cache.num_tokens(1) == 4
    with pytest.raises(ValueError, match="query_lens must be a CPU tensor"):
        fkv.paged_attention_prefill(q, cache, 0, [1], CudaClaim())


def test_a_read_only_out_is_refused():
    cache, _ = cache_with_sequence()
    cache.mark_computed(1, 4)
    q = np.ones((1, HEADS_KV * GROUP, DIM), np.float32)
    out = np.zeros_like(q)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="^out must be writeable"):
        fkv.paged_attention_decode(q, cache, 0, [1], out=Producer(out))
    assert not out.any()


def test_a_producer_that_returns_no_capsule_is_a_type_error():
    cache, slots = cache_with_sequence()

    class NotACapsule(Producer):
        def __dlpack__(self, **kwargs):
            return "capsule"

    k = np.ones((4, HEADS_KV, DIM), np.float32)
    with pytest.raises(TypeError, match=r"^k.__dlpack__\(\) returned str, not an unused DLPack"):
        cache.write_kv(0, slots, NotACapsule(k), k)


@needs_torch
def test_torch_errors_name_the_argument_and_the_problem():
    cache, slots = cache_with_sequence()
    cache.mark_computed(1, 4)
    good = torch.ones((4, HEADS_KV, DIM))
    with pytest.raises(ValueError, match=r"^k must have dtype float32, got float64$"):
        cache.write_kv(0, slots, good.double(), good)
    with pytest.raises(ValueError, match=r"^k must be C-contiguous$"):
        cache.write_kv(0, slots, torch.ones((4, DIM, HEADS_KV)).transpose(1, 2), good)
    with pytest.raises(ValueError, match=r"^v must have shape \(4, 2, 16\), got \(4, 2, 8\)$"):
        cache.write_kv(0, slots, good, good[:, :, :8].contiguous())
    with pytest.raises(ValueError, match=r"^k must have dtype float32, got bfloat16$"):
        cache.write_kv(0, slots, good.bfloat16(), good.bfloat16())
    with pytest.raises(ValueError, match=r"^k must have dtype float32, got complex64$"):
        cache.write_kv(0, slots, good.to(torch.complex64), good)
    with pytest.raises(ValueError, match=r"^k has DLPack dtype \(code 5, bits 64, lanes 1\)"):
        cache.write_kv(0, slots, Producer(good.to(torch.complex64)), good)
    with pytest.raises(RuntimeError, match="requires grad"):
        cache.write_kv(0, slots, good.clone().requires_grad_(), good)
    with pytest.raises(ValueError, match=r"^k must be a CPU tensor, got one on meta "):
        cache.write_kv(0, slots, torch.empty((4, HEADS_KV, DIM), device="meta"), good)
    with pytest.raises(ValueError, match=r"^tokens must have an integer dtype, got bfloat16$"):
        cache.append_tokens(1, torch.ones(2, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"^slots must have an integer dtype, got float32$"):
        cache.write_kv(0, torch.ones(4), good, good)
    f16 = fkv.PagedKvCache(config("float16"))
    f16.add_sequence(1, np.arange(4))
    with pytest.raises(ValueError, match=r"float32 or float16 \(the storage dtype float16\), "
                                         r"got bfloat16$"):
        f16.write_kv(0, f16.slot_mapping(1, 0, 4), good.bfloat16(), good.bfloat16())
    q = torch.ones((1, HEADS_KV * GROUP, DIM))
    with pytest.raises(ValueError, match=r"^out must have dtype float32, got bfloat16$"):
        fkv.paged_attention_decode(q, cache, 0, [1], out=q.bfloat16())
    in_arena = torch.from_dlpack(cache.storage.array()[0, 0, 0].reshape(1, 8, DIM)[:, :4])
    with pytest.raises(ValueError, match=r"^out must not be a view of the storage's K/V arena"):
        fkv.paged_attention_decode(q, cache, 0, [1], out=in_arena)
    with pytest.raises(ValueError, match=r"^q must be C-contiguous$"):
        fkv.paged_attention_decode(torch.ones((1, DIM, HEADS_KV * GROUP)).transpose(1, 2),
                                   cache, 0, [1])
    assert not cache.storage.array().any()
