"""Paged attention kernels (ferrum_kv._core.paged_attention_*_tables): parity with the float64
NumPy reference on random data over a sampled grid of geometries, every output element written,
and argument checks that raise instead of reading out of bounds.

Tolerance: the kernels accumulate in float32 with a polynomial exp; on these sizes their relative
error ||out - ref|| / ||ref|| against float64 is ~1e-7, so 1e-5 has margin and still fails on any
wrong key, weight, mask or row (those give errors of order 1e-2 or more).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import ferrum_kv._core as core
from ferrum_kv import reference as ref

TOLERANCE = 1e-5
DTYPES = ["float32", "float16", "bfloat16"]
FAST_ISAS = [isa for isa in core.attention_isas() if isa != "reference"]


class Case:
    """A KvStorage filled with random K/V through its views, shuffled block tables and queries."""

    def __init__(self, dtype, block_size, head_dim, num_kv_heads, group, context_lens, seed=0):
        rng = np.random.default_rng(seed)
        self.context_lens = np.asarray(context_lens, dtype=np.int32)
        blocks = -(-self.context_lens // block_size)
        num_blocks = int(blocks.sum()) + 2  # two blocks no table references
        config = core.CacheConfig(num_layers=2, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                  block_size=block_size, num_blocks=num_blocks, dtype=dtype)
        self.storage = core.KvStorage(config)
        values = rng.standard_normal(self.storage.array().shape, dtype=np.float32)
        if dtype == "bfloat16":
            self.storage.array()[...] = ref.float32_to_bfloat16_bits(values)
        else:
            self.storage.array()[...] = values.astype(dtype)
        self.block_tables = shuffled_tables(rng, blocks, num_blocks)
        self.num_q_heads = num_kv_heads * group
        self.rng = rng

    def queries(self, rows):
        # Norm ~3 sqrt(head_dim) against unit-variance keys: scores of std ~3, a peaked softmax.
        head_dim = self.storage.config.head_dim
        return 3.0 * self.rng.standard_normal((rows, self.num_q_heads, head_dim), dtype=np.float32)


def shuffled_tables(rng, blocks, num_blocks):
    """Block tables [len(blocks), max(blocks)] int32: sequence i gets blocks[i] distinct block
    ids drawn at random from [0, num_blocks), then -1 padding."""
    ids = rng.permutation(num_blocks).astype(np.int32)
    tables = np.full((len(blocks), int(blocks.max())), -1, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(blocks)])
    for i, n in enumerate(blocks):
        tables[i, :n] = ids[starts[i] : starts[i] + n]
    return tables


def relative_error(out, expected):
    return np.linalg.norm(out - expected) / np.linalg.norm(expected)


def poisoned(q):
    return np.full(q.shape, np.nan, dtype=np.float32)


# (block_size, head_dim, num_kv_heads, group, context_lens): every block size, head_dim, GQA ratio
# and context length of the grid appears at least once, batches mix lengths, and the single long
# sequences are split across threads (flash-decoding).
DECODE_GRID = [
    (16, 128, 2, 4, [1, 15, 16, 17, 1000, 4097]),
    (1, 64, 1, 8, [17, 1, 300]),
    (5, 72, 2, 1, [1000, 16, 15]),
    (8, 80, 1, 4, [4097]),
    (32, 96, 2, 8, [1, 17, 1000]),
    (32, 256, 1, 4, [15, 4097]),
    (16, 256, 2, 1, [1000, 17]),
    (64, 128, 2, 4, [63, 65, 1000]),  # 16-bit spans of 32 keys inside 64-key blocks
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens", DECODE_GRID)
def test_decode_matches_float64_reference(dtype, block_size, head_dim, num_kv_heads, group,
                                          context_lens):
    case = Case(dtype, block_size, head_dim, num_kv_heads, group, context_lens)
    q, expected = decode_inputs(case)
    for isa in FAST_ISAS:
        out = poisoned(q)
        result = core.paged_attention_decode_tables(q, case.storage, 1, case.block_tables,
                                                    case.context_lens, out=out, isa=isa)
        assert result is out
        assert np.isfinite(out).all(), isa
        assert relative_error(out, expected) < TOLERANCE, isa


# (block_size, head_dim, num_kv_heads, group, context_lens, query_lens)
# 40 query heads per KV head: one decode tile of 40 rows, run by the wide path (rows in SIMD
# lanes, as prefill; precision "fast" keeps float32 scores there, docs/attention.md).
WIDE_DECODE_GRID = [(16, 64, 1, 40, [100, 17]), (5, 72, 2, 24, [33])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens", WIDE_DECODE_GRID)
def test_wide_decode_tiles_match_float64_reference(dtype, block_size, head_dim, num_kv_heads,
                                                   group, context_lens):
    case = Case(dtype, block_size, head_dim, num_kv_heads, group, context_lens)
    q, expected = decode_inputs(case)
    for isa, precision, out in decode_in_every_isa_and_precision(case, q):
        bound = TOLERANCE if precision == "exact" else 1.5e-2  # bfloat16's fast P.V
        assert relative_error(out, expected) < bound, (isa, precision)


def decode_in_every_isa_and_precision(case, q):
    """(isa, precision, output) of layer 1's decode in every kernel variant, both precisions."""
    for isa in FAST_ISAS:
        for precision in ("exact", "fast"):
            yield isa, precision, core.paged_attention_decode_tables(
                q, case.storage, 1, case.block_tables, case.context_lens, isa=isa,
                precision=precision)


PREFILL_GRID = [
    (16, 128, 2, 4, [17, 1, 100], [17, 1, 100]),  # whole prompts, no cached prefix
    (5, 72, 1, 8, [1000, 40], [37, 40]),  # a chunk after a cached prefix, and a whole prompt
    (32, 64, 2, 1, [4097], [16]),
    (1, 80, 1, 4, [15, 16], [1, 16]),
    (8, 256, 1, 4, [300], [300]),
    (16, 96, 2, 8, [1000], [1000]),
    (16, 64, 1, 3, [130], [130]),  # tiles of 21 tokens x 3 heads = 63 rows
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens,query_lens",
                         PREFILL_GRID)
def test_prefill_matches_float64_reference(dtype, block_size, head_dim, num_kv_heads, group,
                                           context_lens, query_lens):
    case = Case(dtype, block_size, head_dim, num_kv_heads, group, context_lens)
    query_lens, q, expected = prefill_inputs(case, query_lens)
    out = poisoned(q)
    core.paged_attention_prefill_tables(q, case.storage, 0, case.block_tables, case.context_lens,
                                        query_lens, out=out)
    assert np.isfinite(out).all()
    assert relative_error(out, expected) < TOLERANCE


def assert_single_token_prefill_equals_decode(case):
    """Prefill of one query token per sequence gives decode's output bit for bit (layer 0)."""
    q = case.queries(len(case.context_lens))
    decode = core.paged_attention_decode_tables(q, case.storage, 0, case.block_tables,
                                                case.context_lens)
    prefill = core.paged_attention_prefill_tables(q, case.storage, 0, case.block_tables,
                                                  case.context_lens,
                                                  np.ones(len(case.context_lens), np.int32))
    np.testing.assert_array_equal(prefill, decode)


def test_prefill_of_single_tokens_equals_decode():
    assert_single_token_prefill_equals_decode(Case("float16", 16, 64, 2, 4, [30, 1, 70]))


def test_cpp_oracle_and_thread_counts_agree_with_numpy_reference():
    case = Case("bfloat16", 5, 72, 2, 4, [3000, 7])
    q = case.queries(2)
    expected = ref.paged_attention_decode_reference(q, case.storage, 0, case.block_tables,
                                                    case.context_lens, scale=0.3)
    for isa, threads in [("reference", 0), ("auto", 1), ("auto", 2), ("auto", 5)]:
        out = core.paged_attention_decode_tables(q, case.storage, 0, case.block_tables,
                                                 case.context_lens, scale=0.3, isa=isa,
                                                 num_threads=threads)
        assert relative_error(out, expected) < TOLERANCE, (isa, threads)


def test_concurrent_calls_from_python_threads_give_the_serial_results():
    case = Case("float32", 16, 64, 2, 4, [500, 900, 33])
    queries = [case.queries(3) for _ in range(6)]

    def run(q):
        return core.paged_attention_decode_tables(q, case.storage, 1, case.block_tables,
                                                  case.context_lens)

    serial = [run(q) for q in queries]
    with ThreadPoolExecutor(3) as pool:
        for got, want in zip(pool.map(run, queries), serial):
            np.testing.assert_array_equal(got, want)


def test_memory_read_probe_reads_every_word():
    words = np.arange(1, 1001, dtype=np.uint64)
    assert core.memory_read_probe(words, num_threads=2) == 1000 * 1001 // 2
    with pytest.raises(ValueError):
        core.memory_read_probe(np.zeros(3, np.uint8))


# ---- argument checks: each raises, and leaves out untouched (checks come before any compute)

@pytest.fixture
def small():
    case = Case("float16", 4, 32, 2, 2, [10, 5])
    return case, case.queries(2)


def decode(case, **overrides):
    args = dict(storage=case.storage, layer=0, block_tables=case.block_tables,
                context_lens=case.context_lens)
    args.update(overrides)
    return core.paged_attention_decode_tables(**args)


@pytest.mark.parametrize("make_overrides,error,match", [
    (lambda c, q: dict(q=q.astype(np.float64)), ValueError, "q must have dtype float32"),
    (lambda c, q: dict(q=q[0]), ValueError, "q must be 3-D"),
    (lambda c, q: dict(q=q[..., :16].copy()), ValueError, r"q must have shape \(2, 4, 32\)"),
    (lambda c, q: dict(q=np.asfortranarray(q)), ValueError, "C-contiguous"),
    (lambda c, q: dict(q=q[:, :3].copy()), ValueError, "multiple of num_kv_heads"),
    (lambda c, q: dict(layer=2), IndexError, "layer 2"),
    (lambda c, q: dict(layer=-1), IndexError, "layer -1"),
    (lambda c, q: dict(block_tables=c.block_tables.astype(np.int64)), ValueError, "int32"),
    (lambda c, q: dict(block_tables=c.block_tables[:1]), ValueError, "block_tables must have shape"),
    (lambda c, q: dict(block_tables=c.block_tables[0]), ValueError, "block_tables must be 2-D"),
    (lambda c, q: dict(context_lens=np.array([10, 0], np.int32)), ValueError, "context_lens"),
    (lambda c, q: dict(context_lens=np.array([10, 13], np.int32)), ValueError, "max_blocks"),
    (lambda c, q: dict(context_lens=np.array([10], np.int32)), ValueError, "context_lens"),
    (lambda c, q: dict(block_tables=np.where(c.block_tables == c.block_tables[0, 2], 7,
                                             c.block_tables).astype(np.int32)),
     ValueError, "not a block id"),
    (lambda c, q: dict(block_tables=np.where(c.block_tables == c.block_tables[1, 1], -1,
                                             c.block_tables).astype(np.int32)),
     ValueError, "not a block id"),
    (lambda c, q: dict(scale=float("nan")), ValueError, "scale"),
    (lambda c, q: dict(isa="sse9"), ValueError, "unknown attention kernel"),
    (lambda c, q: dict(out=q), ValueError, "overlap"),
    (lambda c, q: dict(out=np.zeros((2, 4, 16), np.float32)), ValueError, "out must have shape"),
    (lambda c, q: dict(out=np.zeros(q.shape, np.float16)), ValueError, "out must have dtype"),
    (lambda c, q: dict(num_threads=-1), ValueError, "num_threads"),
])
def test_decode_rejects_bad_arguments(small, make_overrides, error, match):
    case, q = small
    overrides = make_overrides(case, q)
    overrides.setdefault("q", q)
    if "out" not in overrides:
        overrides["out"] = poisoned(overrides["q"])
        with pytest.raises(error, match=match):
            decode(case, **overrides)
        assert np.isnan(overrides["out"]).all()
    else:
        with pytest.raises(error, match=match):
            decode(case, **overrides)


def test_decode_rejects_read_only_out(small):
    case, q = small
    out = poisoned(q)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        decode(case, q=q, out=out)


def test_padding_past_the_last_used_block_is_never_read(small):
    case, q = small
    tables = case.block_tables.copy()
    assert tables[1, 2] == -1  # sequence 1 (5 tokens, block size 4) uses two blocks
    tables[1, 2] = 10**9
    np.testing.assert_array_equal(decode(case, q=q, block_tables=tables), decode(case, q=q))


@pytest.mark.parametrize("query_lens,rows,match", [
    ([3, 6], 9, r"query_lens\[1\] = 6"),
    ([0, 1], 1, r"query_lens\[0\] = 0"),
    ([2, 2], 3, "sum"),
])
def test_prefill_rejects_bad_query_lens(small, query_lens, rows, match):
    case, _ = small
    q = case.queries(rows)
    out = poisoned(q)
    with pytest.raises(ValueError, match=match):
        core.paged_attention_prefill_tables(q, case.storage, 0, case.block_tables,
                                            case.context_lens,
                                            np.asarray(query_lens, np.int32), out=out)
    assert np.isnan(out).all()


# ---- optional features: sliding window, logit soft cap, ALiBi (alone and combined)

def alibi_slopes(num_q_heads):
    """vLLM's / the ALiBi paper's slopes for a power-of-two head count, 2^(-8 (h + 1) / H)."""
    return np.exp2(-8.0 * np.arange(1, num_q_heads + 1) / num_q_heads).astype(np.float32)


FEATURES = [
    dict(sliding_window=1),
    dict(sliding_window=7),
    dict(sliding_window=16),  # equal to some contexts below
    dict(sliding_window=100),
    dict(sliding_window=10**6),  # larger than every context
    dict(soft_cap=5.0),
    dict(soft_cap=50.0),
    dict(alibi=True),
    dict(sliding_window=20, soft_cap=3.0, alibi=True),
]


def decode_inputs(case):
    """Random queries, one per sequence, and the float64 reference output of decode over case's
    layer 1."""
    q = case.queries(len(case.context_lens))
    return q, ref.paged_attention_decode_reference(q, case.storage, 1, case.block_tables,
                                                   case.context_lens)


def prefill_in_every_isa(case, q, query_lens, **kwargs):
    """Yields (isa, out): layer 0's prefill of q run by every kernel variant of FAST_ISAS, each
    into a fresh NaN-poisoned out."""
    for isa in FAST_ISAS:
        out = poisoned(q)
        core.paged_attention_prefill_tables(q, case.storage, 0, case.block_tables,
                                            case.context_lens, query_lens, out=out, isa=isa,
                                            **kwargs)
        yield isa, out


def prefill_inputs(case, query_lens, **kwargs):
    """query_lens as int32, random queries for them, and the float64 reference output of
    prefill over case's layer 0 (kwargs: the attention options)."""
    query_lens = np.asarray(query_lens, dtype=np.int32)
    q = case.queries(int(query_lens.sum()))
    expected = ref.paged_attention_prefill_reference(q, case.storage, 0, case.block_tables,
                                                     case.context_lens, query_lens, **kwargs)
    return query_lens, q, expected


def feature_kwargs(features, num_q_heads):
    kwargs = {k: v for k, v in features.items() if k != "alibi"}
    if features.get("alibi"):
        kwargs["alibi_slopes"] = alibi_slopes(num_q_heads)
    return kwargs


FEATURE_DECODE_GRID = [
    (16, 128, 2, 4, [1, 15, 16, 17, 1000]),
    (5, 72, 2, 1, [16, 100]),
    (8, 80, 1, 4, [4097]),  # split across threads
    (1, 36, 1, 8, [17, 300]),
]


@pytest.mark.parametrize("features", FEATURES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens", FEATURE_DECODE_GRID)
def test_decode_features_match_float64_reference(features, dtype, block_size, head_dim,
                                                 num_kv_heads, group, context_lens):
    case = Case(dtype, block_size, head_dim, num_kv_heads, group, context_lens)
    q = case.queries(len(context_lens))
    kwargs = feature_kwargs(features, case.num_q_heads)
    expected = ref.paged_attention_decode_reference(q, case.storage, 1, case.block_tables,
                                                    case.context_lens, **kwargs)
    for isa in FAST_ISAS + ["reference"]:
        out = poisoned(q)
        core.paged_attention_decode_tables(q, case.storage, 1, case.block_tables,
                                           case.context_lens, out=out, isa=isa, **kwargs)
        assert np.isfinite(out).all(), isa
        assert relative_error(out, expected) < TOLERANCE, isa


FEATURE_PREFILL_GRID = [
    (16, 128, 2, 4, [17, 1, 100], [17, 1, 100]),  # whole prompts
    (5, 72, 1, 8, [1000, 40], [37, 40]),  # a chunk after a cached prefix
    (1, 80, 1, 4, [15, 16], [1, 16]),
    (16, 96, 2, 8, [300], [300]),
]


@pytest.mark.parametrize("features", FEATURES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens,query_lens",
                         FEATURE_PREFILL_GRID)
def test_prefill_features_match_float64_reference(features, dtype, block_size, head_dim,
                                                  num_kv_heads, group, context_lens, query_lens):
    case = Case(dtype, block_size, head_dim, num_kv_heads, group, context_lens)
    kwargs = feature_kwargs(features, case.num_q_heads)
    query_lens, q, expected = prefill_inputs(case, query_lens, **kwargs)
    for isa, out in prefill_in_every_isa(case, q, query_lens, **kwargs):
        assert np.isfinite(out).all(), isa
        assert relative_error(out, expected) < TOLERANCE, isa


def test_features_change_the_result_and_reference_agrees_with_explicit_formula():
    # Window 1 attends only to the query's own key: out = V of the last token.
    case = Case("float32", 4, 32, 2, 2, [10, 5])
    q = case.queries(2)
    out = core.paged_attention_decode_tables(q, case.storage, 0, case.block_tables,
                                             case.context_lens, sliding_window=1)
    for i, context in enumerate(case.context_lens):
        t = int(context) - 1
        block = case.block_tables[i, t // 4]
        v = case.storage.value_cache(0)[block][:, t % 4]  # [num_kv_heads, head_dim]
        np.testing.assert_allclose(out[i], np.repeat(v, 2, axis=0), rtol=1e-6)
    plain = core.paged_attention_decode_tables(q, case.storage, 0, case.block_tables,
                                               case.context_lens)
    for kwargs in [dict(sliding_window=3), dict(soft_cap=1.0),
                   dict(alibi_slopes=np.full(4, 0.5, np.float32))]:
        changed = core.paged_attention_decode_tables(q, case.storage, 0, case.block_tables,
                                                     case.context_lens, **kwargs)
        assert relative_error(changed, plain) > 1e-3, kwargs


def test_public_wrappers_pass_the_features():
    from ferrum_kv import PagedKvCache, CacheConfig, paged_attention_decode, paged_attention_prefill
    config = CacheConfig(num_layers=1, num_kv_heads=2, head_dim=16, block_size=4, num_blocks=16,
                         dtype="float32")
    cache = PagedKvCache(config)
    rng = np.random.default_rng(3)
    cache.add_sequence(7, np.arange(13))
    storage = cache.storage
    storage.array()[...] = rng.standard_normal(storage.array().shape, dtype=np.float32)
    cache.mark_computed(7, 13)
    metadata = cache.batch_metadata([7])
    kwargs = dict(sliding_window=5, soft_cap=4.0, alibi_slopes=alibi_slopes(4))
    q = 3.0 * rng.standard_normal((1, 4, 16), dtype=np.float32)
    expected = ref.paged_attention_decode_reference(q, storage, 0, metadata.block_tables,
                                                    metadata.context_lens, **kwargs)
    assert relative_error(paged_attention_decode(q, cache, 0, [7], **kwargs), expected) < TOLERANCE
    q = 3.0 * rng.standard_normal((6, 4, 16), dtype=np.float32)
    expected = ref.paged_attention_prefill_reference(q, storage, 0, metadata.block_tables,
                                                     np.array([11], np.int32),
                                                     np.array([6], np.int32), **kwargs)
    got = paged_attention_prefill(q, cache, 0, [7], [6], context_lens=[11], **kwargs)
    assert relative_error(got, expected) < TOLERANCE


@pytest.mark.parametrize("kwargs,match", [
    (dict(sliding_window=0), r"sliding_window must be .* got 0"),
    (dict(sliding_window=-3), r"sliding_window must be .* got -3"),
    (dict(soft_cap=0.0), r"soft_cap must be .* got 0"),
    (dict(soft_cap=-2.5), r"soft_cap must be .* got -2.5"),
    (dict(soft_cap=float("inf")), r"soft_cap must be .* got inf"),
    (dict(alibi_slopes=np.ones(3, np.float32)), r"alibi_slopes must have shape \(4,\), got \(3,\)"),
    (dict(alibi_slopes=np.ones(4, np.float64)), "alibi_slopes must have dtype float32, got float64"),
    (dict(alibi_slopes=np.ones((4, 1), np.float32)), "alibi_slopes must be 1-D"),
    (dict(alibi_slopes=np.array([1, np.nan, 1, 1], np.float32)), r"alibi_slopes\[1\] must be finite, got nan"),
])
@pytest.mark.parametrize("kernel", ["decode", "prefill"])
def test_features_reject_bad_arguments(small, kwargs, match, kernel):
    case, q = small
    out = poisoned(q)
    with pytest.raises(ValueError, match=match):
        if kernel == "decode":
            decode(case, q=q, out=out, **kwargs)
        else:
            core.paged_attention_prefill_tables(q, case.storage, 0, case.block_tables,
                                                case.context_lens, np.ones(2, np.int32), out=out,
                                                **kwargs)
    assert np.isnan(out).all()


@pytest.mark.parametrize("kwargs", [dict(sliding_window=0), dict(soft_cap=-1.0),
                                    dict(alibi_slopes=np.ones(3))])
def test_reference_rejects_bad_feature_arguments(small, kwargs):
    case, q = small
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ref.paged_attention_decode_reference(q, case.storage, 0, case.block_tables,
                                             case.context_lens, **kwargs)
