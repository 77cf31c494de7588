"""Automatic prefix caching: reuse, publication, eviction order, isolation, reset, events, and a
model-based test against a pure-Python model of the same semantics."""

import itertools
from collections import OrderedDict

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv import reference as ref

BS = 4
HEADS, DIM = 2, 3


def make_cache(num_blocks=32, policy="lru", **kw):
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=HEADS, head_dim=DIM, block_size=BS,
                          num_blocks=num_blocks, enable_prefix_caching=True,
                          eviction_policy=policy, **kw)
    return fkv.PagedKvCache(cfg)


def compute(cache, seq_id, start, rng):
    """Write random K/V for tokens [start, num_tokens) and mark them computed; return K."""
    n = cache.num_tokens(seq_id)
    k = rng.standard_normal((n - start, HEADS, DIM)).astype(np.float32)
    cache.write_kv(0, cache.slot_mapping(seq_id, start, n), k, -k)
    cache.mark_computed(seq_id, n)
    return k


def test_reuse_of_a_computed_prompt():
    rng = np.random.default_rng(0)
    cache = make_cache()
    prompt = rng.integers(0, 50000, 40)
    assert cache.add_sequence(1, prompt) == 0
    k1 = compute(cache, 1, 0, rng)
    assert cache.stats()["cached_blocks"] == 10
    # Same prompt: everything but the last block (the engine must compute the last token).
    assert cache.add_sequence(2, prompt) == 36
    assert cache.block_table(2)[:9].tolist() == cache.block_table(1)[:9].tolist()
    assert cache.block_table(2)[9] != cache.block_table(1)[9]
    # A longer prompt with the same start reuses all 10 blocks.
    assert cache.add_sequence(3, np.concatenate([prompt, [7, 8]])) == 40
    np.testing.assert_array_equal(cache.gather_kv(3, 0)[0][:40], k1)
    # Diverging inside block 3: blocks 0-2 only.
    other = prompt.copy()
    other[13] += 1
    assert cache.add_sequence(4, other) == 12
    stats = cache.stats()
    assert stats["prefix_query_tokens"] == 40 + 40 + 42 + 40
    assert stats["prefix_hit_tokens"] == 36 + 40 + 12
    cache.check_invariants()


def test_freed_blocks_stay_cached_until_memory_is_needed():
    rng = np.random.default_rng(1)
    cache = make_cache(num_blocks=12)
    prompt = rng.integers(0, 100, 32)  # 8 blocks
    cache.add_sequence(1, prompt)
    k1 = compute(cache, 1, 0, rng)
    cache.free_sequence(1)
    stats = cache.stats()
    assert stats["free_blocks"] == 4 and stats["evictable_blocks"] == 8
    assert cache.can_allocate(48) and not cache.can_allocate(49)
    assert cache.memory_pressure == "low"  # evictable blocks count as available
    cache.add_sequence(2, np.arange(16) + 1000)  # 4 blocks: the free ones, no eviction
    assert cache.stats()["evictions"] == 0
    assert cache.add_sequence(3, prompt) == 28
    np.testing.assert_array_equal(cache.gather_kv(3, 0)[0][:28], k1[:28])
    cache.check_invariants()


def test_lru_evicts_the_end_of_a_prompt_before_its_beginning():
    rng = np.random.default_rng(2)
    cache = make_cache(num_blocks=8, enable_kv_events=True)
    prompt = rng.integers(0, 100, 32)  # all 8 blocks
    cache.add_sequence(1, prompt)
    compute(cache, 1, 0, rng)
    cache.free_sequence(1)
    cache.drain_events()
    cache.add_sequence(2, np.arange(12) + 500)  # needs 3 blocks: evicts blocks 7, 6, 5
    events = cache.drain_events()
    assert [e["type"] for e in events] == ["removed"] * 3
    assert cache.stats()["evictions"] == 3
    cache.free_sequence(2)
    assert cache.add_sequence(3, prompt) == 20  # blocks 0-4 survived


def test_priority_lru_keeps_high_priority_prompts():
    rng = np.random.default_rng(3)
    cache = make_cache(num_blocks=8, policy="priority_lru")
    keep, drop = rng.integers(0, 100, 16), rng.integers(100, 200, 16)
    cache.add_sequence(1, keep, priority=90)
    cache.add_sequence(2, drop, priority=10)
    compute(cache, 1, 0, rng)
    compute(cache, 2, 0, rng)
    cache.free_sequence(2)  # released first, but
    cache.free_sequence(1)  # released last does not matter: priority does
    cache.add_sequence(3, np.arange(16) + 900)  # evicts 4 blocks
    cache.free_sequence(3)
    assert cache.add_sequence(4, keep) == 12
    assert cache.add_sequence(5, drop) == 0


def test_fifo_evicts_in_publication_order():
    rng = np.random.default_rng(4)
    cache = make_cache(num_blocks=8, policy="fifo")
    first, second = rng.integers(0, 100, 16), rng.integers(100, 200, 16)
    cache.add_sequence(1, first)
    compute(cache, 1, 0, rng)
    cache.add_sequence(2, second)
    compute(cache, 2, 0, rng)
    cache.free_sequence(2)
    cache.free_sequence(1)  # most recently released, but published first
    cache.add_sequence(3, np.arange(16) + 900)
    cache.free_sequence(3)
    assert cache.add_sequence(4, second) == 12
    assert cache.add_sequence(5, first) == 0


def test_namespaces_never_share_blocks():
    rng = np.random.default_rng(5)
    cache = make_cache()
    prompt = rng.integers(0, 100, 20)
    cache.add_sequence(1, prompt, namespace=b"tenant-a")
    compute(cache, 1, 0, rng)
    assert cache.add_sequence(2, prompt, namespace=b"tenant-b") == 0
    assert cache.add_sequence(3, prompt) == 0
    assert cache.add_sequence(4, prompt, namespace=b"tenant-a") == 16
    assert not set(cache.block_table(2)) & set(cache.block_table(1))
    with pytest.raises(TypeError):
        cache.add_sequence(5, prompt, namespace="tenant-a")


def test_publication_needs_mark_computed_and_full_blocks():
    rng = np.random.default_rng(6)
    cache = make_cache()
    prompt = rng.integers(0, 100, 10)
    cache.add_sequence(1, prompt)
    assert cache.add_sequence(2, prompt) == 0  # nothing computed yet
    cache.mark_computed(1, 6)  # one full block computed
    assert cache.stats()["cached_blocks"] == 1
    cache.append_tokens(1, [1, 2])  # 12 tokens: block 2 full
    cache.mark_computed(1, 12)
    assert cache.stats()["cached_blocks"] == 3
    assert cache.add_sequence(3, np.concatenate([prompt, [1, 2, 3]])) == 12


def test_reset_drops_unheld_blocks_and_unindexes_held_ones():
    rng = np.random.default_rng(7)
    cache = make_cache(num_blocks=16, enable_kv_events=True)
    a, b = rng.integers(0, 100, 16), rng.integers(100, 200, 16)
    cache.add_sequence(1, a)
    cache.add_sequence(2, b)
    compute(cache, 1, 0, rng)
    compute(cache, 2, 0, rng)
    cache.free_sequence(1)
    cache.drain_events()
    cache.reset_prefix_cache()
    events = cache.drain_events()
    assert [e["type"] for e in events] == ["cleared"]
    stats = cache.stats()
    assert stats["cached_blocks"] == 0 and stats["evictable_blocks"] == 0
    assert stats["free_blocks"] == 12  # sequence 2 keeps its 4 blocks
    assert cache.add_sequence(3, b) == 0 and cache.add_sequence(4, a) == 0
    cache.check_invariants()


def test_events_are_ordered_and_name_hashes():
    rng = np.random.default_rng(8)
    cache = make_cache(num_blocks=4, enable_kv_events=True)
    cache.add_sequence(1, rng.integers(0, 100, 8))
    compute(cache, 1, 0, rng)
    cache.free_sequence(1)
    cache.add_sequence(2, rng.integers(0, 100, 16))  # evicts both cached blocks
    events = cache.drain_events()
    assert [e["type"] for e in events] == ["stored", "stored", "removed", "removed"]
    assert [e["seq_no"] for e in events] == [1, 2, 3, 4]
    assert all(len(e["hash"]) == 32 for e in events)
    assert {e["hash"] for e in events[:2]} == {e["hash"] for e in events[2:]}
    assert cache.drain_events() == []


def test_events_are_off_unless_asked_for():
    rng = np.random.default_rng(13)
    cache = make_cache(num_blocks=4)
    assert not cache.config.enable_kv_events
    cache.add_sequence(1, rng.integers(0, 100, 8))
    compute(cache, 1, 0, rng)
    assert cache.stats()["cached_blocks"] == 2
    assert cache.drain_events() == []
    with pytest.raises(ValueError, match="enable_kv_events=True needs enable_prefix_caching"):
        fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=1, block_size=BS, num_blocks=4,
                        enable_kv_events=True)


def test_prefix_caching_survives_fork_and_swap():
    rng = np.random.default_rng(9)
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=HEADS, head_dim=DIM, block_size=BS,
                          num_blocks=16, num_host_blocks=8, enable_prefix_caching=True)
    cache = fkv.PagedKvCache(cfg)
    prompt = rng.integers(0, 100, 14)
    cache.add_sequence(1, prompt)
    k = compute(cache, 1, 0, rng)
    cache.fork(1, 2)
    cache.swap_out(1)  # cached blocks stay with the child
    cache.check_invariants()
    cache.swap_in(1)
    cache.check_invariants()
    np.testing.assert_array_equal(cache.gather_kv(1, 0)[0], k)
    cache.free_sequence(2)
    assert cache.add_sequence(3, prompt) == 12
    cache.check_invariants()


class Model:
    """Prefix-cache semantics in plain Python (LRU policy, device tier only), with whole-prompt
    hits (stored logits)."""

    def __init__(self, num_blocks, max_prompt_logits):
        self.num_blocks = num_blocks
        self.max_prompt_logits = max_prompt_logits
        # (ns, tokens) -> dict(logits, copy: block or None, k: K of the tokens after the full
        # blocks, as the storing sequence wrote them); LRU: first is dropped first.
        self.prompts = OrderedDict()
        self.seqs = {}  # id -> dict(tokens, ns, blocks, computed, published, k)
        self.refs = {}  # block -> table references
        self.cached = {}  # key -> block
        self.key_of = {}  # block -> key
        self.evictable = OrderedDict()  # LRU: first is evicted first
        self.data = {}  # block -> K of its tokens (as written by the first sequence)
        self.new_block = itertools.count()
        self.evictions = 0

    def copies(self):
        return {e["copy"] for e in self.prompts.values() if e["copy"] is not None}

    def free(self):
        return self.num_blocks - len(set(self.refs) | set(self.key_of) | self.copies())

    def reclaimable(self):
        """Stored prompts whose copy no table holds, least recently used first."""
        return [key for key, e in self.prompts.items()
                if e["copy"] is not None and e["copy"] not in self.refs]

    def available(self):
        return self.free() + len(self.evictable) + len(self.reclaimable())

    def dead(self, prompt):
        """A stored prompt whose last full block is no longer cached: it cannot hit."""
        ns, tokens = prompt
        full = len(tokens) // BS
        return full > 0 and self.key(ns, tokens, full - 1) not in self.cached

    def allocate(self, n):
        missing = n - self.free()
        # Copies of prompts that cannot hit first, then cached blocks, then the other copies.
        while missing > 0 and any(self.dead(p) for p in self.reclaimable()):
            del self.prompts[next(p for p in self.reclaimable() if self.dead(p))]
            missing -= 1
        while missing > 0 and self.evictable:
            victim, _ = self.evictable.popitem(last=False)
            del self.cached[self.key_of.pop(victim)]
            self.evictions += 1
            missing -= 1
        while missing > 0:
            del self.prompts[self.reclaimable()[0]]
            missing -= 1
        blocks = [next(self.new_block) for _ in range(n)]
        for b in blocks:
            self.refs[b] = 1
        return blocks

    @staticmethod
    def key(ns, tokens, i):
        return (ns, tuple(tokens[: (i + 1) * BS]))

    def hits(self, tokens, ns):
        """The cached blocks add would reuse."""
        hits = []
        while len(hits) < (len(tokens) - 1) // BS and self.key(ns, tokens, len(hits)) in self.cached:
            hits.append(self.cached[self.key(ns, tokens, len(hits))])
        return hits

    def fits(self, tokens, ns):
        """Whether add would succeed: taken hits stop being evictable."""
        hits = self.hits(tokens, ns)
        needed = -(-len(tokens) // BS) - len(hits)
        return needed <= self.available() - sum(b in self.evictable for b in hits)

    def add(self, seq_id, tokens, ns):
        n = len(tokens)
        hits = self.hits(tokens, ns)
        if not self.fits(tokens, ns):
            raise fkv.OutOfBlocksError
        needed = -(-n // BS) - len(hits)
        for b in hits:
            self.evictable.pop(b, None)
            self.refs[b] = self.refs.get(b, 0) + 1
        self.seqs[seq_id] = dict(tokens=list(tokens), ns=ns, blocks=hits + self.allocate(needed),
                                 computed=len(hits) * BS, published=len(hits))
        return len(hits) * BS

    def add_with_logits(self, seq_id, tokens, ns):
        """(cached tokens, logits or None, the stored K of the partly filled block or None)."""
        n, full = len(tokens), len(tokens) // BS
        entry = self.prompts.get((ns, tuple(tokens)))
        if entry is None or any(self.key(ns, tokens, i) not in self.cached for i in range(full)):
            return self.add(seq_id, tokens, ns), None, None
        self.prompts.move_to_end((ns, tuple(tokens)))
        blocks = [self.cached[self.key(ns, tokens, i)] for i in range(full)]
        blocks += [entry["copy"]] if entry["copy"] is not None else []
        for b in blocks:
            self.evictable.pop(b, None)
            self.refs[b] = self.refs.get(b, 0) + 1
        self.seqs[seq_id] = dict(tokens=list(tokens), ns=ns, blocks=blocks, computed=n,
                                 published=full)
        return n, entry["logits"], entry["k"]

    def store_logits(self, seq_id, logits, k):
        """k: K of the sequence's tokens."""
        seq = self.seqs[seq_id]
        key = (seq["ns"], tuple(seq["tokens"]))
        if key in self.prompts:
            self.prompts[key]["logits"] = logits
            self.prompts.move_to_end(key)
            return
        copy = None
        if len(seq["tokens"]) % BS:
            if self.available() < 1:
                raise fkv.OutOfBlocksError
            copy = self.allocate(1)[0]
            del self.refs[copy]  # held by the entry, not by a table
            self.data[copy] = self.data.get(seq["blocks"][-1], {}).copy()
        self.prompts[key] = dict(logits=logits, copy=copy, k=k[len(k) // BS * BS:])
        if len(self.prompts) > self.max_prompt_logits:
            self.prompts.popitem(last=False)

    def append(self, seq_id, tokens):
        seq = self.seqs[seq_id]
        count = len(seq["tokens"])
        last = seq["blocks"][-1]  # shared with other tables or a stored prompt: copied first
        cow = bool(tokens) and count % BS != 0 and self.refs[last] + (last in self.copies()) > 1
        new = -(-(count + len(tokens)) // BS) - len(seq["blocks"])
        if new + cow > self.available():
            raise fkv.OutOfBlocksError
        if cow:
            old = seq["blocks"][-1]
            self.refs[old] -= 1
            seq["blocks"][-1] = self.allocate(1)[0]
            self.data[seq["blocks"][-1]] = self.data.get(old, {}).copy()
        seq["blocks"] += self.allocate(new)
        seq["tokens"] += tokens

    def mark_computed(self, seq_id, n):
        seq = self.seqs[seq_id]
        seq["computed"] = max(seq["computed"], n)
        for i in range(seq["published"], seq["computed"] // BS):
            b, key = seq["blocks"][i], self.key(seq["ns"], seq["tokens"], i)
            if b not in self.key_of and key not in self.cached:
                self.cached[key], self.key_of[b] = b, key
        seq["published"] = max(seq["published"], seq["computed"] // BS)

    def fork(self, parent, child):
        p = self.seqs[parent]
        self.seqs[child] = dict(p, tokens=list(p["tokens"]), blocks=list(p["blocks"]))
        for b in p["blocks"]:
            self.refs[b] += 1

    def free_sequence(self, seq_id):
        blocks = self.seqs.pop(seq_id)["blocks"]
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                del self.refs[b]
        for b in reversed(blocks):
            if b in self.key_of and b not in self.refs and b not in self.evictable:
                self.evictable[b] = True


@pytest.mark.parametrize("seed, dtype", [
    (0, "float32"), (1, "float32"), (2, "float32"), (3, "float32"),
    # Prefix hits, whole-prompt hits (stored logits and the stored last block), eviction, fork
    # and decode on quantized blocks: reads give the NumPy quantize -> dequantize of the writes.
    (4, "int8"), (5, "fp8_e4m3"), (6, "fp8_e5m2"), (7, "int4"),
])
def test_random_operations_against_the_model(seed, dtype):
    rng = np.random.default_rng(seed)
    num_blocks = 40
    cache = make_cache(num_blocks=num_blocks, max_prompt_logits=3, dtype=dtype)
    model = Model(num_blocks, max_prompt_logits=3)
    prompts = [rng.integers(0, 30, int(rng.integers(4, 30))).tolist() for _ in range(5)]
    next_id = itertools.count()
    seen = dict.fromkeys(["hit", "whole", "evict", "oob", "decode"], 0)
    # K of every token position per sequence, to check data read through reused blocks.
    kdata = {}

    def write_uncomputed(seq_id):
        """Writes random K (and V = K) for the tokens not yet computed, in the cache and in the
        model's blocks; returns the sequence's length."""
        seq = model.seqs[seq_id]
        start, n = seq["computed"], len(seq["tokens"])
        k = rng.standard_normal((n - start, HEADS, DIM)).astype(np.float32)
        cache.write_kv(0, cache.slot_mapping(seq_id, start, n), k, k)
        k = ref.round_to_storage(k, dtype)  # what the cache holds
        kdata[seq_id][start:] = k
        for pos in range(start, n):
            model.data.setdefault(seq["blocks"][pos // BS], np.zeros((BS, HEADS, DIM), np.float32))[pos % BS] = k[pos - start]
        return n

    for _ in range(800):
        op = rng.choice(["add", "append", "compute", "store", "fork", "free", "decode"],
                        p=[0.28, 0.13, 0.18, 0.1, 0.1, 0.14, 0.07])
        live = list(model.seqs)
        if op == "add":
            seq_id = next(next_id)
            if live and rng.random() < 0.25:  # exactly a running sequence's tokens (a retry)
                source = model.seqs[int(rng.choice(live))]
                tokens, ns = list(source["tokens"]), source["ns"]
            else:
                tokens = prompts[int(rng.integers(len(prompts)))] + rng.integers(0, 30, int(rng.integers(0, 6))).tolist()
                ns = [b"", b"x"][int(rng.random() < 0.2)]
            with_logits = rng.random() < 0.5
            # The read-only probes predict a plain add_sequence (and change nothing: the checks
            # after every operation compare the whole state with the model's).
            assert cache.cached_prefix_len(tokens, namespace=ns) == len(model.hits(tokens, ns)) * BS
            assert cache.can_allocate(tokens, namespace=ns) == model.fits(tokens, ns)
            try:
                if with_logits:
                    expected, expected_logits, stored_k = model.add_with_logits(seq_id, tokens, ns)
                else:
                    expected = model.add(seq_id, tokens, ns)
            except fkv.OutOfBlocksError:
                with pytest.raises(fkv.OutOfBlocksError):
                    if with_logits:
                        cache.add_sequence_with_logits(seq_id, tokens, namespace=ns)
                    else:
                        cache.add_sequence(seq_id, tokens, namespace=ns)
                seen["oob"] += 1
            else:
                if with_logits:
                    got, logits = cache.add_sequence_with_logits(seq_id, tokens, namespace=ns)
                    assert got == expected
                    if expected_logits is None:
                        assert logits is None
                    else:  # a whole-prompt hit: the stored logits and the stored last block's K
                        np.testing.assert_array_equal(logits, expected_logits)
                        tail = len(tokens) // BS * BS
                        np.testing.assert_array_equal(cache.gather_kv(seq_id, 0)[0][tail:], stored_k)
                        seen["whole"] += 1
                else:
                    assert cache.add_sequence(seq_id, tokens, namespace=ns) == expected
                seen["hit"] += expected > 0
                k, _ = cache.gather_kv(seq_id, 0)
                kdata[seq_id] = np.full((len(tokens), HEADS, DIM), np.nan, np.float32)
                kdata[seq_id][:expected] = k[:expected]
                # Reused blocks hold what their first writer wrote.
                for i in range(expected // BS):
                    np.testing.assert_array_equal(k[i * BS:(i + 1) * BS], model.data[model.seqs[seq_id]["blocks"][i]])
        elif op == "append" and live:
            seq_id = int(rng.choice(live))
            tokens = rng.integers(0, 30, int(rng.integers(1, 5))).tolist()
            try:
                model.append(seq_id, tokens)
            except fkv.OutOfBlocksError:
                with pytest.raises(fkv.OutOfBlocksError):
                    cache.append_tokens(seq_id, tokens)
                seen["oob"] += 1
            else:
                cache.append_tokens(seq_id, tokens)
                pad = np.full((len(tokens), HEADS, DIM), np.nan, np.float32)
                kdata[seq_id] = np.concatenate([kdata[seq_id], pad])
        elif op == "compute" and live:
            seq_id = int(rng.choice(live))
            n = write_uncomputed(seq_id)
            cache.mark_computed(seq_id, n)
            model.mark_computed(seq_id, n)
        elif op == "store" and any(
                model.seqs[s]["computed"] == len(model.seqs[s]["tokens"]) for s in live):
            done = [s for s in live if model.seqs[s]["computed"] == len(model.seqs[s]["tokens"])]
            seq_id = int(rng.choice(done))
            logits = rng.standard_normal(5).astype(np.float32)
            try:
                model.store_logits(seq_id, logits, kdata[seq_id].copy())
            except fkv.OutOfBlocksError:
                with pytest.raises(fkv.OutOfBlocksError):
                    cache.store_logits(seq_id, logits)
                seen["oob"] += 1
            else:
                cache.store_logits(seq_id, logits)
        elif op == "fork" and any(model.seqs[s]["computed"] == len(model.seqs[s]["tokens"]) for s in live):
            # The scheduler contract: a sequence is forked once its K/V is written, so that
            # nobody writes into a shared block.
            done = [s for s in live if model.seqs[s]["computed"] == len(model.seqs[s]["tokens"])]
            parent, child = int(rng.choice(done)), next(next_id)
            cache.fork(parent, child)
            model.fork(parent, child)
            kdata[child] = kdata[parent].copy()
        elif op == "decode" and live and model.free() >= 2:
            # One decode step over some sequences: it marks each one's tokens computed (their
            # K written first), then appends a token to each. At most one copy and one new block
            # each, all free: nothing is evicted.
            size = min(int(rng.integers(1, len(live) + 1)), model.free() // 2)
            batch = [int(s) for s in rng.permutation(live)[:size]]
            new_tokens = rng.integers(0, 30, len(batch)).tolist()
            for seq_id in batch:
                write_uncomputed(seq_id)
            cache.append_batch(batch, new_tokens)
            for seq_id, token in zip(batch, new_tokens):
                model.mark_computed(seq_id, len(model.seqs[seq_id]["tokens"]))
                model.append(seq_id, [token])
                kdata[seq_id] = np.concatenate([kdata[seq_id], np.full((1, HEADS, DIM), np.nan, np.float32)])
            seen["decode"] += 1
        elif op == "free" and live:
            seq_id = int(rng.choice(live))
            if rng.random() < 0.5:
                cache.free_sequence(seq_id)
            else:  # the end of a request: its K/V written, marked computed as it is freed
                n = write_uncomputed(seq_id)
                cache.free_sequence(seq_id, num_computed=n)
                model.mark_computed(seq_id, n)
            model.free_sequence(seq_id)
            del kdata[seq_id]
        cache.check_invariants()
        stats = cache.stats()
        assert stats["free_blocks"] == model.free()
        assert stats["cached_blocks"] == len(model.cached)
        assert stats["evictable_blocks"] == len(model.evictable)
        assert stats["evictions"] == model.evictions
        assert stats["prompt_logits"] == len(model.prompts)
        for seq_id, seq in model.seqs.items():
            computed = seq["computed"]
            np.testing.assert_array_equal(cache.gather_kv(seq_id, 0)[0][:computed], kdata[seq_id][:computed])
    seen["evict"] = model.evictions
    assert all(count > 0 for count in seen.values()), seen


def test_mark_computed_batch_is_validated_first_then_publishes():
    rng = np.random.default_rng(10)
    cache = make_cache()
    a, b = rng.integers(0, 100, 9), rng.integers(100, 200, 8)
    cache.add_sequence(1, a)
    cache.add_sequence(2, b)
    with pytest.raises(ValueError, match="num_tokens must be in"):
        cache.mark_computed_batch([1, 2], [9, 9])  # sequence 2 has 8 tokens
    with pytest.raises(KeyError):
        cache.mark_computed_batch([1, 7], [9, 1])
    with pytest.raises(ValueError, match="same length"):
        cache.mark_computed_batch([1, 2], [9])
    assert cache.stats()["cached_blocks"] == 0  # nothing applied
    cache.mark_computed_batch(np.array([1, 2]), np.array([9, 8]))
    assert cache.stats()["cached_blocks"] == 4
    assert cache.add_sequence(3, b) == 4 and cache.add_sequence(4, a) == 8


def test_mark_computed_batch_with_a_repeated_sequence_takes_the_largest_count():
    rng = np.random.default_rng(12)
    cache = make_cache()
    tokens = rng.integers(0, 100, 5 * BS + 1)
    cache.add_sequence(1, tokens)
    cache.mark_computed_batch([1, 1, 1], [2 * BS, 5 * BS, 3 * BS])  # marks only ever grow
    cache.check_invariants()
    assert cache.stats()["cached_blocks"] == 5
    assert cache.add_sequence(2, tokens) == 5 * BS
    # The later blocks are keyed as continuations of the first ones, not of an empty prefix.
    assert cache.add_sequence(3, np.concatenate([tokens[2 * BS:], [7]])) == 0
    cache.check_invariants()


def test_decode_steps_publish_the_blocks_they_fill():
    rng = np.random.default_rng(11)
    cache = make_cache()
    prompt = rng.integers(0, 100, 6)
    cache.add_sequence(1, prompt)
    cache.mark_computed(1, 6)  # prefill done: block 0 published
    assert cache.stats()["cached_blocks"] == 1
    generated = []
    for _ in range(3):  # tokens 6, 7, 8: block 1 fills with token 7
        token = int(rng.integers(0, 100))
        cache.append_batch([1], [token])
        generated.append(token)
    # The third append implies token 7 (the last of block 1) is computed: block 1 is published.
    assert cache.stats()["cached_blocks"] == 2
    history = np.concatenate([prompt, generated, [1]])
    assert cache.add_sequence(2, history) == 8
    cache.check_invariants()


@pytest.mark.parametrize("events", [False, True])
def test_a_decode_step_publishes_every_computed_block_of_each_sequence(events):
    # Sequence 1 is one token past a block edge; sequence 2 has two full blocks whose tokens were
    # never marked computed (added, then appended to). One decode step marks both computed: it
    # publishes 1's last block and both of 2's, keyed as their whole prefixes.
    rng = np.random.default_rng(14)
    cache = make_cache(enable_kv_events=events)
    first = rng.integers(0, 2**31 - 1, BS - 1)
    cache.add_sequence(1, first, namespace=b"a")
    cache.mark_computed(1, BS - 1)
    second = rng.integers(0, 2**31 - 1, BS + 1)
    cache.add_sequence(2, second[:3])
    cache.append_tokens(2, second[3:])
    cache.append_batch([1], [5])  # fills sequence 1's block 0 (its last token not computed yet)
    assert cache.stats()["cached_blocks"] == 0
    cache.append_tokens(2, [6, 7, 8])  # 2 full blocks, nothing computed
    cache.append_batch([2, 1], [9, 10])
    cache.check_invariants()
    assert cache.stats()["cached_blocks"] == 3
    if events:
        stored = [e["hash"] for e in cache.drain_events() if e["type"] == "stored"]
        assert stored == (fkv.block_hashes(list(second) + [6, 7, 8], BS) +
                          fkv.block_hashes(list(first) + [5], BS, namespace=b"a"))
    # The chains continue from there: the next blocks are keyed after them.
    for _ in range(BS):
        cache.append_batch([1, 2], [11, 12])
    cache.check_invariants()
    assert cache.stats()["cached_blocks"] == 5
    tokens_1, tokens_2 = cache.tokens(1), cache.tokens(2)
    assert cache.add_sequence(3, tokens_1 + [0], namespace=b"a") == 2 * BS
    assert cache.add_sequence(4, tokens_2 + [0]) == 3 * BS
    assert cache.add_sequence(5, tokens_1 + [0]) == 0  # another namespace
    cache.check_invariants()


def test_a_decode_step_publishes_the_full_block_before_a_partly_filled_last_block():
    # Two full blocks and two tokens, only block 0 marked computed: the decode step publishes
    # block 1 (its one block to offer), not the partly filled block after it.
    rng = np.random.default_rng(15)
    cache = make_cache()
    tokens = rng.integers(0, 2**31 - 1, 2 * BS + 2)
    cache.add_sequence(1, tokens)
    k = rng.standard_normal((2 * BS + 2, HEADS, DIM)).astype(np.float32)
    cache.write_kv(0, cache.slot_mapping(1, 0, 2 * BS + 2), k, -k)
    cache.mark_computed(1, BS)
    assert cache.stats()["cached_blocks"] == 1
    cache.append_batch([1], [7])
    cache.check_invariants()
    assert cache.stats()["cached_blocks"] == 2
    assert cache.add_sequence(2, list(tokens) + [7, 8]) == 2 * BS
    reused_k, reused_v = cache.gather_kv(2, 0)
    np.testing.assert_array_equal(reused_k[: 2 * BS], k[: 2 * BS])
    np.testing.assert_array_equal(reused_v[: 2 * BS], -k[: 2 * BS])
    cache.check_invariants()


def test_published_hashes_are_the_block_hashes_of_the_spec():
    rng = np.random.default_rng(12)
    cache = make_cache(enable_kv_events=True)
    prompt = rng.integers(0, 2**31 - 1, 18)
    cache.add_sequence(1, prompt, namespace=b"tenant")
    cache.mark_computed(1, 18)
    stored = [e["hash"] for e in cache.drain_events() if e["type"] == "stored"]
    assert stored == fkv.block_hashes(prompt, BS, namespace=b"tenant")
    assert len(stored) == 4
