"""What a scheduler asks the cache: admission with prefix hits, computed counts checked by the
attention calls, stale slots refused, and the end of a request (issue 17)."""

import numpy as np
import pytest

import ferrum_kv as fkv

HEADS, DIM, BLOCK = 2, 4, 4


def make_cache(num_blocks=8, num_host_blocks=4, caching=True):
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=HEADS, head_dim=DIM, block_size=BLOCK,
                          num_blocks=num_blocks, num_host_blocks=num_host_blocks,
                          enable_prefix_caching=caching)
    return fkv.PagedKvCache(cfg)


def write(cache, seq_id, start, end, rng):
    """Random K/V for token positions [start, end) of seq_id."""
    slots = cache.slot_mapping(seq_id, start, end)
    k = rng.standard_normal((end - start, HEADS, DIM)).astype(np.float32)
    cache.write_kv(0, slots, k, -k)


# 1. Admission that knows about prefix hits.

def test_can_allocate_tokens_admits_a_prompt_its_prefix_hits_make_fit():
    cache = make_cache(num_blocks=4)
    cache.add_sequence(1, np.arange(12))  # 3 of the 4 blocks, computed and running
    cache.mark_computed(1, 12)
    prompt = np.arange(13)
    before = cache.stats()
    assert not cache.can_allocate(13)  # an int keeps counting every block
    assert not cache.can_allocate(num_tokens=13)
    assert cache.cached_prefix_len(prompt) == 12
    assert cache.can_allocate(prompt)
    assert cache.can_allocate(list(range(13)))
    assert cache.cached_prefix_len(prompt, namespace=b"other") == 0
    assert not cache.can_allocate(prompt, namespace=b"other")
    assert cache.stats() == before  # the probes changed nothing
    cache.check_invariants()
    assert cache.add_sequence(2, prompt) == 12
    cache.check_invariants()
    assert not cache.can_allocate(np.arange(100, 105))


def test_can_allocate_tells_a_count_from_a_prompt():
    cache = make_cache(num_blocks=1)
    assert cache.can_allocate(np.array([9]))  # a 1-token prompt
    assert cache.can_allocate([1, 2, 3, 4])
    assert not cache.can_allocate(np.array([1, 2, 3, 4, 5]))
    assert not cache.can_allocate(5) and not cache.can_allocate(np.int64(5))  # counts
    assert cache.can_allocate(4)


def test_probes_reject_what_add_sequence_rejects():
    cache = make_cache()
    for probe in (cache.cached_prefix_len, cache.can_allocate):
        with pytest.raises(ValueError):
            probe(np.array([], dtype=np.int32))
        with pytest.raises(ValueError):
            probe([1, -2])
    with pytest.raises(ValueError):
        cache.can_allocate(-1)


def test_cached_prefix_len_without_prefix_caching_is_zero():
    cache = make_cache(caching=False)
    cache.add_sequence(1, np.arange(12))
    cache.mark_computed(1, 12)
    assert cache.cached_prefix_len(np.arange(13)) == 0
    assert cache.add_sequence(2, np.arange(13)) == 0


# 2. Computed counts, exposed and checked.

def test_num_computed_and_batch_metadata():
    cache = make_cache()
    cache.add_sequence(1, np.arange(10))
    assert cache.num_computed(1) == 0
    cache.mark_computed(1, 4)
    assert cache.num_computed(1) == 4
    cache.append_batch([1], [5])
    m = cache.batch_metadata([1])
    assert m.num_computed.tolist() == [10] and m.num_computed.dtype == np.int32
    assert m.context_lens.tolist() == [11]
    with pytest.raises(KeyError):
        cache.num_computed(99)


def test_decode_over_a_half_computed_sequence_is_refused():
    rng = np.random.default_rng(0)
    cache = make_cache()
    cache.add_sequence(3, np.arange(10))
    write(cache, 3, 0, 4, rng)
    cache.mark_computed(3, 4)  # 4 of 10: six slots were never written
    q = rng.standard_normal((1, HEADS, DIM)).astype(np.float32)
    with pytest.raises(fkv.InvalidStateError, match="sequence 3"):
        fkv.paged_attention_decode(q, cache, 0, [3])
    write(cache, 3, 4, 10, rng)
    cache.mark_computed(3, 9)  # the query token's own K/V is this step's
    out = fkv.paged_attention_decode(q, cache, 0, [3])
    assert np.isfinite(out).all()


def test_prefill_needs_the_positions_before_its_chunk_computed():
    rng = np.random.default_rng(1)
    cache = make_cache()
    cache.add_sequence(1, np.arange(6))
    cache.add_sequence(2, np.arange(100, 112))
    write(cache, 1, 0, 6, rng)
    write(cache, 2, 0, 8, rng)  # the first chunk of sequence 2, not marked computed
    q = rng.standard_normal((6 + 4, HEADS, DIM)).astype(np.float32)
    with pytest.raises(fkv.InvalidStateError, match="sequence 2"):  # second chunk: 4 after 4
        fkv.paged_attention_prefill(q, cache, 0, [1, 2], [6, 4], context_lens=[6, 8])
    cache.mark_computed(2, 4)
    fkv.paged_attention_prefill(q, cache, 0, [1, 2], [6, 4], context_lens=[6, 8])
    # Decode-like query over the whole of sequence 1 without its tokens marked: refused.
    with pytest.raises(fkv.InvalidStateError, match="sequence 1"):
        fkv.paged_attention_decode(q[:1], cache, 0, [1])


def test_attention_takes_isa_and_num_threads():
    rng = np.random.default_rng(2)
    cache = make_cache()
    cache.add_sequence(1, np.arange(7))
    write(cache, 1, 0, 7, rng)
    cache.mark_computed(1, 7)
    q = rng.standard_normal((1, HEADS, DIM)).astype(np.float32)
    reference = fkv.paged_attention_decode(q, cache, 0, [1], isa="reference", num_threads=1)
    for isa in fkv.attention_isas():
        got = fkv.paged_attention_decode(q, cache, 0, [1], isa=isa, num_threads=2)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
        got = fkv.paged_attention_prefill(q, cache, 0, [1], [1], isa=isa, num_threads=1)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        fkv.paged_attention_decode(q, cache, 0, [1], isa="no such isa")


# 3. Slots that no longer belong to anyone.

@pytest.mark.parametrize("release", ["free_sequence", "swap_out"])
def test_stale_slots_are_refused(release):
    rng = np.random.default_rng(3)
    cache = make_cache(caching=False)
    cache.add_sequence(1, np.arange(6))
    stale = cache.slot_mapping(1, 0, 6)
    getattr(cache, release)(1)
    cache.check_invariants()
    k = rng.standard_normal((6, HEADS, DIM)).astype(np.float32)
    with pytest.raises(fkv.InvalidStateError, match="slots\\[0\\]"):
        cache.write_kv(0, stale, k, k)
    # The freed blocks go to the next sequence: the stale write would have landed in its K/V.
    cache.add_sequence(2, np.arange(3))
    write(cache, 2, 0, 3, rng)
    before = cache.gather_kv(2, 0)
    with pytest.raises(fkv.InvalidStateError):
        cache.write_kv(0, np.concatenate([cache.slot_mapping(2, 0, 1), stale[4:5]]), k[:2], k[:2])
    np.testing.assert_array_equal(cache.gather_kv(2, 0)[0], before[0])  # nothing written
    cache.check_invariants()


# 4. End of a request.

def test_multi_turn_keeps_every_computed_block_with_free_sequence_num_computed():
    rng = np.random.default_rng(4)
    hits = {}
    for keep_last in (False, True):
        cache = make_cache()
        cache.add_sequence(1, np.arange(6))  # turn 1: a 6-token prompt
        write(cache, 1, 0, 6, rng)
        cache.mark_computed(1, 6)
        for token in (6, 7):  # two decode steps; each writes its token's K/V
            cache.append_batch([1], [token])
            n = cache.num_tokens(1)
            write(cache, 1, n - 1, n, rng)
        assert cache.num_computed(1) == 7  # decode steps mark all but the last token
        if keep_last:
            cache.free_sequence(1, num_computed=cache.num_tokens(1))
        else:
            cache.free_sequence(1)
        cache.check_invariants()
        hits[keep_last] = cache.add_sequence(2, np.arange(11))  # turn 2: history + 3 tokens
        cache.check_invariants()
    assert hits == {False: 4, True: 8}


def test_free_sequence_num_computed_is_validated_first():
    cache = make_cache()
    cache.add_sequence(1, np.arange(5))
    with pytest.raises(ValueError):
        cache.free_sequence(1, num_computed=6)
    with pytest.raises(KeyError):
        cache.free_sequence(2, num_computed=0)
    assert 1 in cache
    cache.free_sequence(1, num_computed=5)
    assert 1 not in cache and cache.stats()["cached_blocks"] == 1
    cache.check_invariants()


# 5. The package's surface.

def test_package_re_exports_the_kernel_entry_points():
    for name in ("attention_isas", "paged_attention_decode_tables",
                 "paged_attention_prefill_tables"):
        assert getattr(fkv, name) is getattr(fkv._core, name)
        assert name in fkv.__all__
    assert fkv.attention_isas()[-1] == "reference"
