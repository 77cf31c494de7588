"""Whole-prompt hits: store_logits keeps a computed prompt's last-token logits and a copy of its
partly filled last block; add_sequence_with_logits of the same prompt reuses every block and
returns the logits, so the engine skips prefill."""

import numpy as np
import pytest

import ferrum_kv as fkv

BS = 4
HEADS, DIM = 2, 3
VOCAB = 11


def make_cache(num_blocks=32, max_prompt_logits=4, **kw):
    cfg = fkv.CacheConfig(num_layers=2, num_kv_heads=HEADS, head_dim=DIM, block_size=BS,
                          num_blocks=num_blocks, enable_prefix_caching=True,
                          max_prompt_logits=max_prompt_logits, **kw)
    return fkv.PagedKvCache(cfg)


def compute(cache, seq_id, start, rng):
    """Write random K and V (both layers) for tokens [start, num_tokens) and mark them computed."""
    n = cache.num_tokens(seq_id)
    slots = cache.slot_mapping(seq_id, start, n)
    for layer in range(2):
        k = rng.standard_normal((n - start, HEADS, DIM)).astype(np.float32)
        cache.write_kv(layer, slots, k, k + 1)
    cache.mark_computed(seq_id, n)


def kv(cache, seq_id):
    return [cache.gather_kv(seq_id, layer) for layer in range(2)]


def assert_same_kv(a, b, n):
    for (ka, va), (kb, vb) in zip(a, b):
        np.testing.assert_array_equal(ka[:n], kb[:n])
        np.testing.assert_array_equal(va[:n], vb[:n])


def stored_prompt(cache, rng, seq_id, length, ns=b""):
    """Add a prompt of `length` random tokens, compute it, store random logits; return both."""
    tokens = rng.integers(0, 1000, length)
    cache.add_sequence(seq_id, tokens, namespace=ns)
    compute(cache, seq_id, 0, rng)
    logits = rng.standard_normal(VOCAB).astype(np.float32)
    cache.store_logits(seq_id, logits)
    cache.check_invariants()
    return tokens, logits


@pytest.mark.parametrize("length", [1, 3, 4, 9, 16, 18])
def test_a_stored_prompt_is_a_whole_hit(length):
    rng = np.random.default_rng(length)
    cache = make_cache()
    tokens, logits = stored_prompt(cache, rng, 1, length)
    original = kv(cache, 1)
    free_before = cache.stats()["free_blocks"]
    reused, got = cache.add_sequence_with_logits(2, tokens)
    cache.check_invariants()
    assert reused == length
    np.testing.assert_array_equal(got, logits)
    assert got.dtype == np.float32
    assert cache.stats()["free_blocks"] == free_before  # every block reused, none allocated
    assert cache.num_tokens(2) == length
    assert_same_kv(kv(cache, 2), original, length)
    stats = cache.stats()
    assert stats["prompt_logits"] == 1 and stats["prompt_logits_hits"] == 1
    assert stats["prefix_hit_tokens"] == length
    # Full blocks are the original's; the partly filled last one is the stored copy.
    full = length // BS
    assert cache.block_table(2)[:full].tolist() == cache.block_table(1)[:full].tolist()
    if length % BS:
        assert cache.block_table(2)[-1] != cache.block_table(1)[-1]


def test_other_prompts_get_what_add_sequence_gives_and_no_logits():
    rng = np.random.default_rng(1)
    cache = make_cache()
    tokens, _ = stored_prompt(cache, rng, 1, 10)
    changed = tokens.copy()
    changed[-1] += 1
    cases = {  # tokens -> what add_sequence would return
        2: (tokens[:9], 8),                         # a prefix of the prompt
        3: (np.concatenate([tokens, [5]]), 8),      # the prompt and one more token
        4: (changed, 8),                            # the last token differs
        5: (tokens[:8], 4),                         # ends at a block edge, no logits stored there
    }
    for seq_id, (prompt, expected) in cases.items():
        assert cache.add_sequence_with_logits(seq_id, prompt) == (expected, None)
        cache.check_invariants()
    assert cache.add_sequence_with_logits(6, tokens, namespace=b"other") == (0, None)
    assert cache.stats()["prompt_logits_hits"] == 0
    # Plain add_sequence never reports a whole hit.
    assert cache.add_sequence(7, tokens) == 8


def test_appends_after_a_whole_hit_copy_the_shared_last_block():
    rng = np.random.default_rng(2)
    cache = make_cache()
    tokens, logits = stored_prompt(cache, rng, 1, 10)
    original = kv(cache, 1)
    cache.add_sequence_with_logits(2, tokens)
    cows = cache.stats()["cow_copies"]
    cache.append_batch([1, 2], [7, 8])  # both write into their own partly filled block
    compute(cache, 1, 10, rng)
    compute(cache, 2, 10, rng)
    assert cache.stats()["cow_copies"] == cows + 1  # sequence 2 copied the stored block first
    cache.check_invariants()
    # The stored copy still holds the prompt: a third request gets exactly the prompt's K/V.
    assert cache.add_sequence_with_logits(3, tokens)[0] == 10
    assert_same_kv(kv(cache, 3), original, 10)
    assert not np.array_equal(kv(cache, 1)[0][0][10], kv(cache, 2)[0][0][10])
    cache.check_invariants()


def test_storing_again_replaces_the_logits_and_keeps_one_copy():
    rng = np.random.default_rng(3)
    cache = make_cache()
    tokens, _ = stored_prompt(cache, rng, 1, 7)
    used = cache.stats()["used_blocks"]
    newer = np.linspace(-1, 1, VOCAB)  # float64: converted
    cache.store_logits(1, newer)
    assert cache.stats()["used_blocks"] == used and cache.stats()["prompt_logits"] == 1
    np.testing.assert_array_equal(cache.add_sequence_with_logits(2, tokens)[1],
                                  newer.astype(np.float32))
    cache.store_logits(2, newer * 2)  # the whole-hit sequence is the same prompt
    np.testing.assert_array_equal(cache.add_sequence_with_logits(3, tokens)[1],
                                  (newer * 2).astype(np.float32))
    cache.check_invariants()


def test_the_least_recently_used_prompt_is_dropped_beyond_capacity():
    rng = np.random.default_rng(4)
    cache = make_cache(max_prompt_logits=2)
    a, _ = stored_prompt(cache, rng, 1, 6)
    b, _ = stored_prompt(cache, rng, 2, 6)
    assert cache.add_sequence_with_logits(10, a)[0] == 6  # a is now more recent than b
    used = cache.stats()["used_blocks"]
    c, _ = stored_prompt(cache, rng, 3, 8)  # ends at a block edge: no copy; drops b's
    assert cache.stats()["prompt_logits"] == 2
    assert cache.stats()["used_blocks"] == used + 2 - 1  # c's 2 blocks, b's copy freed
    assert cache.add_sequence_with_logits(11, b) == (4, None)
    assert cache.add_sequence_with_logits(12, a)[0] == 6
    assert cache.add_sequence_with_logits(13, c)[0] == 8
    cache.check_invariants()


def test_a_whole_hit_needs_the_full_blocks_still_cached():
    rng = np.random.default_rng(5)
    cache = make_cache(num_blocks=6)
    tokens, _ = stored_prompt(cache, rng, 1, 6)  # a full block, a partly filled one, the copy
    cache.free_sequence(1)  # the full block stays cached, evictable; 4 blocks are free
    cache.add_sequence(2, rng.integers(0, 1000, 20))  # needs 5 blocks: evicts it
    assert cache.stats()["evictions"] == 1
    cache.free_sequence(2)
    assert cache.add_sequence_with_logits(3, tokens) == (0, None)
    cache.check_invariants()


def test_reset_drops_the_stored_prompts_and_their_copies():
    rng = np.random.default_rng(6)
    cache = make_cache()
    tokens, _ = stored_prompt(cache, rng, 1, 5)
    cache.free_sequence(1)
    cache.reset_prefix_cache()
    stats = cache.stats()
    assert stats["prompt_logits"] == 0 and stats["used_blocks"] == 0
    assert cache.add_sequence_with_logits(2, tokens) == (0, None)
    cache.check_invariants()


def test_store_logits_errors_change_nothing():
    rng = np.random.default_rng(7)
    off = fkv.PagedKvCache(fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=1, block_size=BS,
                                           num_blocks=8, enable_prefix_caching=True))
    off.add_sequence(1, [1, 2, 3])
    off.mark_computed(1, 3)
    with pytest.raises(fkv.InvalidStateError, match="max_prompt_logits"):
        off.store_logits(1, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=1, block_size=BS, num_blocks=8,
                        max_prompt_logits=1)
    with pytest.raises(ValueError, match="max_prompt_logits"):
        make_cache(max_prompt_logits=-1)

    cache = make_cache(num_blocks=3, num_host_blocks=4)
    cache.add_sequence(1, rng.integers(0, 1000, 6))
    with pytest.raises(fkv.InvalidStateError, match="mark_computed"):
        cache.store_logits(1, np.ones(VOCAB, np.float32))
    compute(cache, 1, 0, rng)
    with pytest.raises(ValueError, match="1-D"):
        cache.store_logits(1, np.ones((2, VOCAB), np.float32))
    with pytest.raises(ValueError, match="at least one"):
        cache.store_logits(1, np.ones(0, np.float32))
    with pytest.raises(KeyError):
        cache.store_logits(9, np.ones(VOCAB, np.float32))
    cache.add_sequence(2, [1])  # the third block: none left for the copy
    with pytest.raises(fkv.OutOfBlocksError):
        cache.store_logits(1, np.ones(VOCAB, np.float32))
    cache.swap_out(2)
    with pytest.raises(fkv.InvalidStateError, match="swapped out"):
        cache.store_logits(2, np.ones(VOCAB, np.float32))
    stats = cache.stats()
    assert stats["prompt_logits"] == 0 and stats["allocation_failures"] == 1
    cache.check_invariants()


def test_fork_swap_and_free_of_whole_hit_sequences():
    rng = np.random.default_rng(8)
    cache = make_cache(num_host_blocks=8)
    tokens, logits = stored_prompt(cache, rng, 1, 7)
    original = kv(cache, 1)
    cache.add_sequence_with_logits(2, tokens)
    cache.fork(2, 3)
    cache.check_invariants()
    cache.swap_out(2)
    cache.swap_in(2)
    assert_same_kv(kv(cache, 2), original, 7)
    for seq_id in (1, 2, 3):
        cache.free_sequence(seq_id)
        cache.check_invariants()
    reused, got = cache.add_sequence_with_logits(4, tokens)
    assert reused == 7
    np.testing.assert_array_equal(got, logits)
    assert_same_kv(kv(cache, 4), original, 7)
    cache.check_invariants()


def test_a_whole_hit_needs_no_free_block():
    rng = np.random.default_rng(9)
    cache = make_cache(num_blocks=5)
    tokens, logits = stored_prompt(cache, rng, 1, 7)  # 2 blocks + the copy
    cache.add_sequence(2, rng.integers(0, 1000, 8))  # the last 2 free blocks
    assert cache.stats()["free_blocks"] == 0
    reused, got = cache.add_sequence_with_logits(3, tokens)
    assert reused == 7
    np.testing.assert_array_equal(got, logits)
    assert not cache.can_allocate(1)  # the copy is held by sequence 3 now: not reclaimable
    cache.check_invariants()


def test_whole_hits_with_events_name_only_full_blocks():
    rng = np.random.default_rng(10)
    cache = make_cache(enable_kv_events=True)
    tokens, _ = stored_prompt(cache, rng, 1, 9, ns=b"t")
    events = cache.drain_events()
    assert [e["type"] for e in events] == ["stored", "stored"]
    assert [e["hash"] for e in events] == fkv.block_hashes(tokens, BS, namespace=b"t")
    assert cache.add_sequence_with_logits(2, tokens, namespace=b"t")[0] == 9
    cache.append_batch([2], [3])
    cache.check_invariants()  # includes each sequence's chain hash
    assert cache.drain_events() == []


def test_every_sibling_copies_the_stored_block_on_its_first_append():
    rng = np.random.default_rng(11)
    cache = make_cache()
    tokens, _ = stored_prompt(cache, rng, 1, 6)
    for seq_id in (2, 3, 4):
        assert cache.add_sequence_with_logits(seq_id, tokens)[0] == 6
    cows = cache.stats()["cow_copies"]
    cache.append_batch([2, 3, 4], [1, 2, 3])  # the store holds the copy too: all three copy it
    assert cache.stats()["cow_copies"] == cows + 3
    cache.check_invariants()


def test_unshared_copies_are_reclaimed_when_memory_runs_out():
    rng = np.random.default_rng(12)
    cache = make_cache(num_blocks=8, max_prompt_logits=4)
    a, _ = stored_prompt(cache, rng, 1, 2)  # under a block: its copy
    b, _ = stored_prompt(cache, rng, 2, 3)
    c, _ = stored_prompt(cache, rng, 3, 5)  # a full block and its copy
    for seq_id in (1, 2, 3):
        cache.free_sequence(seq_id)
    assert cache.add_sequence_with_logits(4, c)[0] == 5  # c's blocks are held again
    cache.check_invariants()
    stats = cache.stats()
    assert stats["free_blocks"] == 4 and stats["evictable_blocks"] == 0
    assert cache.can_allocate(6 * BS)  # 4 free + the copies of a and b
    assert not cache.can_allocate(6 * BS + 1)
    cache.add_sequence(5, rng.integers(0, 1000, 4 * BS))  # the free blocks
    assert cache.stats()["prompt_logits"] == 3
    cache.add_sequence(6, [1])  # drops a: the least recently used prompt with an unshared copy
    assert cache.stats()["prompt_logits"] == 2
    assert cache.add_sequence_with_logits(7, a) == (0, None)  # its block: drops b
    assert cache.stats()["prompt_logits"] == 1
    with pytest.raises(fkv.OutOfBlocksError):  # c's copy is held: nothing left
        cache.add_sequence(8, [1])
    assert cache.add_sequence_with_logits(9, c)[0] == 5
    cache.check_invariants()


def test_storing_at_capacity_with_no_free_block_reuses_the_dropped_copy():
    rng = np.random.default_rng(13)
    cache = make_cache(num_blocks=4, max_prompt_logits=1)
    a, _ = stored_prompt(cache, rng, 1, 3)  # a block and its copy
    cache.free_sequence(1)
    b = rng.integers(0, 1000, 3)
    cache.add_sequence(2, b)
    cache.add_sequence(3, rng.integers(0, 1000, 4))  # the last free block
    compute(cache, 2, 0, rng)
    cache.store_logits(2, np.ones(VOCAB, np.float32))  # needs a block: a's copy
    assert cache.stats()["prompt_logits"] == 1
    assert cache.add_sequence_with_logits(4, a) == (0, None)
    cache.free_sequence(4)
    assert cache.add_sequence_with_logits(5, b)[0] == 3
    cache.check_invariants()


def test_copies_of_prompts_that_cannot_hit_go_before_cached_blocks():
    rng = np.random.default_rng(14)
    cache = make_cache(num_blocks=6)
    a, _ = stored_prompt(cache, rng, 1, 7)  # a full block, a partly filled one, the copy
    cache.free_sequence(1)
    cache.add_sequence(2, rng.integers(0, 1000, 20))  # 5 blocks: evicts a's full block
    assert cache.stats()["evictions"] == 1 and cache.stats()["prompt_logits"] == 1
    compute(cache, 2, 0, rng)
    cache.free_sequence(2)  # its 5 full blocks stay cached, evictable
    cache.add_sequence(3, [1, 2])  # no free block: a's copy goes, not a cached block
    stats = cache.stats()
    assert stats["evictions"] == 1 and stats["prompt_logits"] == 0 and stats["cached_blocks"] == 5
    assert cache.add_sequence_with_logits(4, a) == (0, None)
    cache.check_invariants()
