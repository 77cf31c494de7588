"""Attention over quantized K/V (int8, fp8_e4m3, fp8_e5m2, int4), "exact" precision (and "fast",
checked by test_attention_fast.check_fast_decode / check_fast_prefill on the same cases: see
test_attention_quantized_fast.py): parity with the float64 reference on the dequantized values (read_slot, as gather_kv returns them) over the
grids of test_attention.py: block sizes, head_dim 64-256 with 72/80/96, GQA 1/4/8, contexts
1-4097 in mixed batches, prefill with and without a cached prefix, every option, every variant.

Tolerance: 1e-5 relative (||out - ref|| / ||ref||), as for the float formats. The kernels fold the
scales and offsets into scores and weights instead of dequantizing; on these sizes that measures
~2e-6 against float64 (float32 rounding of scale * (q . codes) + offset * sum(q)), and any wrong
code, scale, offset, group or row gives errors of 1e-2 or more.
"""

import numpy as np
import pytest

import ferrum_kv._core as core
from ferrum_kv import reference as ref
from test_attention import (DECODE_GRID, FAST_ISAS, FEATURE_DECODE_GRID, FEATURE_PREFILL_GRID,
                            FEATURES, PREFILL_GRID, WIDE_DECODE_GRID, Case,
                            assert_single_token_prefill_equals_decode,
                            decode_in_every_isa_and_precision, decode_inputs, feature_kwargs,
                            poisoned, prefill_in_every_isa, prefill_inputs, relative_error,
                            shuffled_tables)
from test_attention_fast import check_fast_decode, check_fast_prefill

TOLERANCE = 1e-5
FORMATS = ["int8", "fp8_e4m3", "fp8_e5m2", "int4"]


class QuantizedCase:
    """A quantized KvStorage written token by token (write_slot quantizes each row): N(0, 1)
    values with a few outlier channels (x 8) and some constant rows (all one value; all zeros),
    shuffled block tables and queries."""

    def __init__(self, dtype, block_size, head_dim, num_kv_heads, group, context_lens, seed=0,
                 layers=(0, 1)):
        rng = np.random.default_rng(seed)
        self.context_lens = np.asarray(context_lens, dtype=np.int32)
        blocks = -(-self.context_lens // block_size)
        num_blocks = int(blocks.sum()) + 2
        config = core.CacheConfig(num_layers=2, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                  block_size=block_size, num_blocks=num_blocks, dtype=dtype)
        self.storage = core.KvStorage(config)
        channel_scale = np.ones(head_dim, np.float32)
        channel_scale[rng.choice(head_dim, size=max(1, head_dim // 32), replace=False)] = 8.0
        for block in range(num_blocks):
            for layer in layers:
                kv = rng.standard_normal((2, block_size, num_kv_heads, head_dim),
                                         dtype=np.float32) * channel_scale
                constant = rng.random((2, block_size, num_kv_heads)) < 0.03
                kv[constant] = rng.choice([0.0, 0.7])
                for offset in range(block_size):
                    self.storage.write_slot(block, layer, offset, kv[0, offset], kv[1, offset])
        self.block_tables = shuffled_tables(rng, blocks, num_blocks)
        self.num_q_heads = num_kv_heads * group
        self.rng = rng

    queries = Case.queries


def check(out, expected, label):
    assert np.isfinite(out).all(), label
    assert relative_error(out, expected) < TOLERANCE, (label, relative_error(out, expected))


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens", DECODE_GRID)
def test_decode_matches_float64_reference_on_dequantized_values(dtype, block_size, head_dim,
                                                                num_kv_heads, group, context_lens):
    case = QuantizedCase(dtype, block_size, head_dim, num_kv_heads, group, context_lens,
                         layers=(1,))
    q, expected = decode_inputs(case)
    for isa in FAST_ISAS + ["reference"]:
        for threads in (1, 2):
            out = poisoned(q)
            core.paged_attention_decode_tables(q, case.storage, 1, case.block_tables,
                                               case.context_lens, out=out, isa=isa,
                                               num_threads=threads)
            check(out, expected, (isa, threads))
    check_fast_decode(case, q, expected, threads=(1, 2))


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens", WIDE_DECODE_GRID)
def test_wide_decode_tiles_on_quantized_storage(dtype, block_size, head_dim, num_kv_heads, group,
                                                context_lens):
    case = QuantizedCase(dtype, block_size, head_dim, num_kv_heads, group, context_lens,
                         layers=(1,))
    q, expected = decode_inputs(case)
    for isa, precision, out in decode_in_every_isa_and_precision(case, q):
        check(out, expected, (isa, precision))


@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens,query_lens",
                         PREFILL_GRID)
def test_prefill_matches_float64_reference_on_dequantized_values(dtype, block_size, head_dim,
                                                                 num_kv_heads, group, context_lens,
                                                                 query_lens):
    case = QuantizedCase(dtype, block_size, head_dim, num_kv_heads, group, context_lens,
                         layers=(0,))
    query_lens, q, expected = prefill_inputs(case, query_lens)
    for isa, out in prefill_in_every_isa(case, q, query_lens):
        check(out, expected, isa)
    # Prefill tiles narrower than a vector (a prompt's last few tokens) run the fast kernel, the
    # others the exact one: the output need not differ from the exact one.
    check_fast_prefill(case, query_lens, q, expected, rounds=False)


@pytest.mark.parametrize("features", FEATURES, ids=str)
@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens",
                         FEATURE_DECODE_GRID)
def test_decode_features_on_quantized_storage(features, dtype, block_size, head_dim,
                                              num_kv_heads, group, context_lens):
    case = QuantizedCase(dtype, block_size, head_dim, num_kv_heads, group, context_lens,
                         layers=(1,))
    q = case.queries(len(context_lens))
    kwargs = feature_kwargs(features, case.num_q_heads)
    expected = ref.paged_attention_decode_reference(q, case.storage, 1, case.block_tables,
                                                    case.context_lens, **kwargs)
    for isa in FAST_ISAS:
        out = poisoned(q)
        core.paged_attention_decode_tables(q, case.storage, 1, case.block_tables,
                                           case.context_lens, out=out, isa=isa, **kwargs)
        check(out, expected, isa)
    # A window of 1 is one key of weight 1: the value itself, rounded the same way.
    check_fast_decode(case, q, expected, rounds=features.get("sliding_window") != 1, **kwargs)


@pytest.mark.parametrize("features", FEATURES, ids=str)
@pytest.mark.parametrize("dtype", FORMATS)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens,query_lens",
                         FEATURE_PREFILL_GRID)
def test_prefill_features_on_quantized_storage(features, dtype, block_size, head_dim,
                                               num_kv_heads, group, context_lens, query_lens):
    case = QuantizedCase(dtype, block_size, head_dim, num_kv_heads, group, context_lens,
                         layers=(0,))
    kwargs = feature_kwargs(features, case.num_q_heads)
    query_lens, q, expected = prefill_inputs(case, query_lens, **kwargs)
    for isa, out in prefill_in_every_isa(case, q, query_lens, **kwargs):
        check(out, expected, isa)
    check_fast_prefill(case, query_lens, q, expected, rounds=False, **kwargs)


@pytest.mark.parametrize("dtype", FORMATS)
def test_quantized_prefill_of_single_tokens_equals_decode(dtype):
    case = QuantizedCase(dtype, 16, 64, 2, 4, [30, 1, 70])
    assert_single_token_prefill_equals_decode(case)


def test_quantization_error_is_the_formats_not_the_kernels():
    """Against the unquantized float32 values the outputs differ by the format's rounding (far
    above 1e-5: the kernel reads the codes, not a float copy), ordered as the formats' bits."""
    rng = np.random.default_rng(5)
    k = rng.standard_normal((256, 2, 128), dtype=np.float32)
    v = rng.standard_normal((256, 2, 128), dtype=np.float32)
    q = 3.0 * rng.standard_normal((1, 8, 128), dtype=np.float32)
    tables = np.arange(16, dtype=np.int32)[None]
    lens = np.array([256], np.int32)
    errors = {}
    for dtype in ["float32"] + FORMATS:
        config = core.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=128, block_size=16,
                                  num_blocks=16, dtype=dtype)
        storage = core.KvStorage(config)
        for t in range(256):
            storage.write_slot(t // 16, 0, t % 16, k[t], v[t])
        out = core.paged_attention_decode_tables(q, storage, 0, tables, lens)
        if dtype == "float32":
            exact = out
        else:
            errors[dtype] = relative_error(out, exact)
    assert 1e-4 < errors["int8"] < errors["fp8_e4m3"] < errors["fp8_e5m2"], errors
    assert errors["int8"] < errors["int4"] < 0.5, errors


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_every_fp8_code_reads_back_exactly_through_attention_in_every_isa(dtype):
    """One key per sequence: the output is its value row, so each of the finite FP8 codes (one
    per column of head_dim 256, NaN/inf codes replaced by 0) must come back as gather_kv's
    dequantized value (read_slot), in every variant and precision (the kernels widen codes with
    their own bit tricks; the fast fp8 kernel's float16 products of a code and a power-of-two
    weight are exact)."""
    config = core.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=256, block_size=16,
                              num_blocks=1, dtype=dtype)
    storage = core.KvStorage(config)
    codes = np.arange(256, dtype=np.uint8)
    exponent_all_ones = (codes & 0x7F) == 0x7F if dtype == "fp8_e4m3" else (codes & 0x7C) == 0x7C
    codes[exponent_all_ones] = 0
    storage.key_cache(0)[...] = 0
    storage.value_cache(0)[0, 0, 0] = codes
    storage.key_scales(0)[...] = 1.0
    storage.value_scales(0)[...] = 0.5  # a power of two: the products stay exact
    tables = np.zeros((1, 1), np.int32)
    lens = np.ones(1, np.int32)
    expected = storage.read_slot(0, 0, 0)[1][0]
    q = np.ones((1, 1, 256), np.float32)
    for isa in FAST_ISAS + ["reference"]:
        for precision in ("exact", "fast"):  # fast fp8 (float16 arithmetic) is exact here too
            out = core.paged_attention_decode_tables(q, storage, 0, tables, lens, isa=isa,
                                                     precision=precision)
            assert np.array_equal(out[0, 0], expected), (isa, precision)
