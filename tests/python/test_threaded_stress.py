"""Many Python threads on ONE PagedKvCache, every operation, each thread checking its own sequences.

The cache has prefix caching, a host tier, stored prompt logits, cache events and few blocks (so
that it runs out and evicts). Each thread owns its own sequence ids and keeps a record of them
(tokens, computed count, swapped state); prompts start with a few shared beginnings so that the
threads share blocks through the prefix cache. The K/V of a position is a function of
(position, token), small integers: every block that may be shared holds the same values whoever
wrote them, so a wrong share or a lost swap shows through gather_kv. A thread only writes K/V of
its own positions not yet computed and forks only computed sequences, so that no block another
thread can read is written (docs/scheduler_contract.md: write_kv takes no lock over the data).

An error is expected only where the API defines it for the call (OutOfBlocksError where blocks
can run out, InvalidStateError for a swapped-out sequence, KeyError / ValueError for the
deliberate mistakes); anything else, or a record mismatch, fails the test.

Environment: FKV_STRESS_THREADS (default 4), FKV_STRESS_SECONDS (default 2; per thread),
FKV_STRESS_OPS (operations per thread; replaces the time limit), FKV_STRESS_SEED (default 1).
tests/run_all.sh runs this file with a ThreadSanitizer build of the extension
(tests/tsan_python.sh).
"""

import os
import threading
import time

import numpy as np
import pytest

import ferrum_kv as fkv

LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 2, 2, 4, 4
PREFIXES = [list(range(100, 112)), list(range(200, 208)), [7, 7, 7, 7, 1, 2, 3, 4, 5, 6, 7, 8]]
LEVELS = {"low", "high", "critical"}


def make_cache():
    cfg = fkv.CacheConfig(num_layers=LAYERS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                          block_size=BLOCK, num_blocks=40, num_host_blocks=24,
                          enable_prefix_caching=True, max_prompt_logits=6, enable_kv_events=True)
    return fkv.PagedKvCache(cfg)


def kv_values(positions, tokens, layer):
    """The K and V of positions holding tokens: small integers (exact in float32)."""
    pos = np.asarray(positions, np.float32)[:, None, None]
    tok = np.asarray(tokens, np.float32)[:, None, None]
    head = np.arange(KV_HEADS, dtype=np.float32)[None, :, None]
    dim = np.arange(HEAD_DIM, dtype=np.float32)[None, None, :]
    k = (tok % 53) + 3 * (pos % 17) + 5 * head + dim + 7 * layer
    v = (tok % 31) - 2 * (pos % 13) - 4 * head - dim + layer
    return k.astype(np.float32), v.astype(np.float32)


def logits_of(tokens):
    t = np.asarray(tokens, np.int64)
    return np.array([len(t), t.sum() % 1000, t[-1], (t * np.arange(1, len(t) + 1)).sum() % 997],
                    np.float32)


class Seq:
    def __init__(self, tokens, computed):
        self.tokens = list(tokens)
        self.computed = computed
        self.swapped = False


class Worker:
    """One thread's driver: its own sequence ids (base * 100000 + n), its record of them."""

    def __init__(self, cache, index, seed, deadline, ops, stored, sabotage=None):
        self.cache, self.index, self.stored = cache, index, stored
        self.rng = np.random.default_rng([seed, index])
        self.deadline, self.ops = deadline, ops
        self.seqs = {}
        self.next_id = (index + 1) * 100000
        self.counts = {}
        self.logits_hits = 0
        self.expected_errors = 0
        self.last_event_seq_no = 0
        self.sabotage = sabotage
        self.error = None

    # ---- helpers ------------------------------------------------------------------------------
    def new_id(self):
        self.next_id += 1
        return self.next_id

    def prompt(self):
        r = self.rng
        base = PREFIXES[r.integers(len(PREFIXES))][: int(r.integers(0, 13))]
        tail = r.integers(0, 50, int(r.integers(0 if base else 1, 7))).tolist()
        return base + tail

    def pick(self, resident=None):
        ids = [s for s, q in self.seqs.items() if resident is None or q.swapped != resident]
        return ids[self.rng.integers(len(ids))] if ids else None

    def expect(self, exc_types, fn, *args, **kw):
        """fn(*args, **kw); an exception of exc_types is expected (returns it), others propagate."""
        try:
            return fn(*args, **kw), None
        except exc_types as e:
            self.expected_errors += 1
            return None, e

    def write_pending(self, sid):
        """Write the K/V of the not yet computed positions of a resident sequence."""
        q = self.seqs[sid]
        n = len(q.tokens)
        if q.computed >= n:
            return
        slots = self.cache.slot_mapping(sid, q.computed, n)
        for layer in range(LAYERS):
            k, v = kv_values(range(q.computed, n), q.tokens[q.computed:], layer)
            self.cache.write_kv(layer, slots, k, v)

    def compute(self, sid):
        self.write_pending(sid)
        q = self.seqs[sid]
        self.cache.mark_computed(sid, len(q.tokens))
        q.computed = len(q.tokens)

    def verify(self, sid):
        cache, q = self.cache, self.seqs[sid]
        got = cache.tokens(sid).tolist()
        assert got == q.tokens, f"seq {sid}: tokens {got} != record {q.tokens}"
        assert cache.num_tokens(sid) == len(q.tokens)
        assert cache.num_computed(sid) == q.computed, (sid, cache.num_computed(sid), q.computed)
        assert cache.is_swapped(sid) == q.swapped, sid
        if self.rng.random() < 0.3 and q.computed:
            layer = int(self.rng.integers(LAYERS))
            k, v = cache.gather_kv(sid, layer)
            ek, ev = kv_values(range(q.computed), q.tokens[: q.computed], layer)
            np.testing.assert_array_equal(k[: q.computed], ek, err_msg=f"K of seq {sid}")
            np.testing.assert_array_equal(v[: q.computed], ev, err_msg=f"V of seq {sid}")

    # ---- operations ---------------------------------------------------------------------------
    def op_add(self):
        if len(self.seqs) >= 6:
            return self.op_free()
        sid, tokens = self.new_id(), self.prompt()
        with_logits = self.rng.random() < 0.4
        stored = list(self.stored)  # a snapshot: other threads append and trim
        if with_logits and stored and self.rng.random() < 0.6:  # a prompt stored before
            tokens = list(stored[int(self.rng.integers(len(stored)))])
        fn = self.cache.add_sequence_with_logits if with_logits else self.cache.add_sequence
        result, err = self.expect(fkv.OutOfBlocksError, fn, sid, np.array(tokens))
        if err is not None:
            assert sid not in self.cache
            return
        cached, logits = result if with_logits else (result, None)
        if logits is not None:
            assert cached == len(tokens)
            np.testing.assert_array_equal(logits, logits_of(tokens))
            self.logits_hits += 1
        else:
            assert cached % BLOCK == 0 and 0 <= cached < len(tokens), (cached, tokens)
        self.seqs[sid] = Seq(tokens, cached)

    def op_append(self):
        sid = self.pick()
        if sid is None:
            return
        q = self.seqs[sid]
        new = self.rng.integers(0, 50, int(self.rng.integers(0, 6))).tolist()
        errors = fkv.InvalidStateError if q.swapped else fkv.OutOfBlocksError
        _, err = self.expect(errors, self.cache.append_tokens, sid, new)
        if err is None:
            assert not q.swapped, "append_tokens on a swapped-out sequence succeeded"
            q.tokens += new

    def op_append_batch(self):
        ids = [s for s, q in self.seqs.items() if not q.swapped]
        if not ids:
            return
        ids = list(self.rng.permutation(ids)[: int(self.rng.integers(1, len(ids) + 1))])
        for sid in ids:
            self.write_pending(sid)  # a decode step counts every earlier token computed
        new = self.rng.integers(0, 50, len(ids)).tolist()
        _, err = self.expect(fkv.OutOfBlocksError, self.cache.append_batch, ids, new)
        if err is None:
            for sid, t in zip(ids, new):
                q = self.seqs[sid]
                q.computed = len(q.tokens)
                q.tokens.append(t)

    def op_write_and_mark(self):
        sid = self.pick(resident=True)
        if sid is None:
            return
        q = self.seqs[sid]
        upto = int(self.rng.integers(q.computed, len(q.tokens) + 1))
        if upto > q.computed:
            slots = self.cache.slot_mapping(sid, q.computed, upto)
            for layer in range(LAYERS):
                k, v = kv_values(range(q.computed, upto), q.tokens[q.computed:upto], layer)
                self.cache.write_kv(layer, slots, k, v)
        self.cache.mark_computed(sid, upto)
        q.computed = upto

    def op_mark_batch(self):
        ids = [s for s, q in self.seqs.items() if not q.swapped]
        if not ids:
            return
        for sid in ids:
            self.write_pending(sid)
        self.cache.mark_computed_batch(ids, [len(self.seqs[s].tokens) for s in ids])
        for sid in ids:
            self.seqs[sid].computed = len(self.seqs[sid].tokens)

    def op_fork(self):
        sid = self.pick()
        if sid is None or len(self.seqs) >= 6:
            return
        child, q = self.new_id(), self.seqs[sid]
        if not q.swapped:  # fork after computing (docs/scheduler_contract.md, rule 3)
            self.compute(sid)
        errors = fkv.OutOfBlocksError
        if q.swapped:
            errors = (fkv.InvalidStateError, fkv.OutOfBlocksError)
        _, err = self.expect(errors, self.cache.fork, sid, child)
        if err is None:
            assert not q.swapped, "fork of a swapped-out sequence succeeded"
            self.seqs[child] = Seq(q.tokens, q.computed)

    def op_free(self):
        sid = self.pick()
        if sid is None:
            return
        q = self.seqs[sid]
        roll = self.rng.random()
        if roll < 0.1:  # a count out of range: ValueError, nothing changes
            _, err = self.expect(ValueError, self.cache.free_sequence, sid,
                                 num_computed=len(q.tokens) + 1)
            assert err is not None and sid in self.cache
            return
        if roll < 0.5 and not q.swapped:
            self.write_pending(sid)
            self.cache.free_sequence(sid, num_computed=len(q.tokens))
        else:
            self.cache.free_sequence(sid)
        del self.seqs[sid]
        assert sid not in self.cache

    def op_swap(self):
        sid = self.pick()
        if sid is None:
            return
        q = self.seqs[sid]
        if q.swapped:
            _, err = self.expect(fkv.OutOfBlocksError, self.cache.swap_in, sid)
        else:
            _, err = self.expect(fkv.OutOfBlocksError, self.cache.swap_out, sid)
        if err is None:
            q.swapped = not q.swapped
        # the wrong direction: InvalidStateError
        wrong = self.cache.swap_out if q.swapped else self.cache.swap_in
        _, err = self.expect(fkv.InvalidStateError, wrong, sid)
        assert err is not None

    def op_store_logits(self):
        sid = self.pick(resident=True)
        if sid is None:
            return
        q = self.seqs[sid]
        if q.computed < len(q.tokens) and self.rng.random() < 0.2:
            _, err = self.expect(fkv.InvalidStateError, self.cache.store_logits, sid, [1.0])
            assert err is not None
            return
        self.compute(sid)
        logits = logits_of(q.tokens)
        _, err = self.expect(fkv.OutOfBlocksError, self.cache.store_logits, sid, logits)
        if err is None:
            self.stored.append(tuple(q.tokens))  # shared by every thread (list.append: atomic)
            del self.stored[:-16]

    def op_metadata(self):
        ids = [s for s, q in self.seqs.items() if not q.swapped]
        if not ids:
            return
        md = self.cache.batch_metadata(ids)
        assert md.context_lens.tolist() == [len(self.seqs[s].tokens) for s in ids]
        assert md.num_computed.tolist() == [self.seqs[s].computed for s in ids]
        for row, sid in enumerate(ids):
            table = self.cache.block_table(sid).tolist()
            assert md.block_tables[row, : len(table)].tolist() == table

    def op_attention(self):
        sid = self.pick(resident=True)
        if sid is None:
            return
        self.compute(sid)
        layer = int(self.rng.integers(LAYERS))
        q = self.rng.standard_normal((1, KV_HEADS, HEAD_DIM)).astype(np.float32)
        out = fkv.paged_attention_decode(q, self.cache, layer, [sid], num_threads=2)
        k, v = (x.astype(np.float64) for x in self.cache.gather_kv(sid, layer))
        logits = np.einsum("hd,nhd->hn", q[0].astype(np.float64), k) / np.sqrt(HEAD_DIM)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        # float32 kernels against a float64 reference: errors scale with the values' magnitude
        # (here up to ~100), so the absolute tolerance does too.
        np.testing.assert_allclose(out[0], np.einsum("hn,nhd->hd", p, v), rtol=1e-4,
                                   atol=1e-5 * np.abs(v).max())

    def op_queries(self):
        tokens = np.array(self.prompt())
        hit = self.cache.cached_prefix_len(tokens)
        assert hit % BLOCK == 0 and 0 <= hit < len(tokens)
        assert isinstance(self.cache.can_allocate(tokens), bool)
        assert isinstance(self.cache.can_allocate(int(self.rng.integers(0, 80))), bool)
        stats = self.cache.stats()
        assert stats["free_blocks"] <= 40
        assert self.cache.memory_pressure in LEVELS
        _, err = self.expect(KeyError, self.cache.num_tokens, 1)  # nobody owns id 1
        assert err is not None
        _, err = self.expect(ValueError, self.cache.cached_prefix_len, np.array([1, -2]))
        assert err is not None

    def op_events(self):
        events = self.cache.drain_events()
        seq_nos = [e["seq_no"] for e in events]
        assert seq_nos == sorted(seq_nos) and len(set(seq_nos)) == len(seq_nos)
        if seq_nos:
            assert seq_nos[0] > self.last_event_seq_no
            self.last_event_seq_no = seq_nos[-1]
        for e in events:
            assert e["type"] in ("stored", "removed", "cleared"), e

    def op_reset(self):
        if self.rng.random() < 0.2:
            self.cache.reset_prefix_cache()

    def op_invariants(self):
        self.cache.check_invariants()

    OPS = [(op_add, 14), (op_append, 10), (op_append_batch, 10), (op_write_and_mark, 10),
           (op_mark_batch, 4), (op_fork, 6), (op_free, 8), (op_swap, 6), (op_store_logits, 5),
           (op_metadata, 5), (op_attention, 6), (op_queries, 5), (op_events, 3), (op_reset, 2),
           (op_invariants, 2)]

    def run(self):
        ops = [f for f, _ in self.OPS]
        weights = np.array([w for _, w in self.OPS], float)
        weights /= weights.sum()
        try:
            n = 0
            while (n < self.ops) if self.ops else (time.monotonic() < self.deadline):
                op = ops[self.rng.choice(len(ops), p=weights)]
                op(self)
                self.counts[op.__name__] = self.counts.get(op.__name__, 0) + 1
                n += 1
                if self.sabotage is not None:
                    self.sabotage(self, n)
                sid = self.pick()
                if sid is not None:
                    self.verify(sid)
            for sid in list(self.seqs):
                self.verify(sid)
                self.cache.free_sequence(sid)
            self.seqs.clear()
        except BaseException as e:  # reported by the main thread
            self.error = e


def run_stress(num_threads, seconds=None, ops=None, seed=1, sabotage=None):
    cache = make_cache()
    deadline = time.monotonic() + (seconds or 0)
    stored = []  # prompts whose logits some thread stored: sent again for whole-prompt hits
    workers = [Worker(cache, i, seed, deadline, ops, stored, sabotage) for i in range(num_threads)]
    threads = [threading.Thread(target=w.run, name=f"stress-{i}") for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return cache, workers


def test_threads_every_operation_on_one_cache():
    num_threads = int(os.environ.get("FKV_STRESS_THREADS", "4"))
    ops = int(os.environ.get("FKV_STRESS_OPS", "0")) or None
    seconds = float(os.environ.get("FKV_STRESS_SECONDS", "2"))
    seed = int(os.environ.get("FKV_STRESS_SEED", "1"))
    start = time.monotonic()
    cache, workers = run_stress(num_threads, seconds=seconds, ops=ops, seed=seed)
    for w in workers:
        if w.error is not None:
            raise AssertionError(f"thread {w.index} failed") from w.error
    cache.check_invariants()
    assert len(cache) == 0
    cache.reset_prefix_cache()
    assert cache.stats()["free_blocks"] == 40
    cache.check_invariants()
    total = {}
    for w in workers:
        for name, c in w.counts.items():
            total[name] = total.get(name, 0) + c
    stats = cache.stats()
    hits = sum(w.logits_hits for w in workers)
    assert hits == stats["prompt_logits_hits"]
    if sum(total.values()) >= 1000:
        # every kind of operation ran; the cache ran out of blocks, evicted, shared prefixes
        assert set(total) == {f.__name__ for f, _ in Worker.OPS}, total
        assert sum(w.expected_errors for w in workers) > 0 and stats["allocation_failures"] > 0
        assert stats["evictions"] > 0 and stats["swap_ins"] > 0 and stats["prefix_hit_tokens"] > 0
        assert hits > 0
    print(f"\n{num_threads} threads, {sum(total.values())} operations in "
          f"{time.monotonic() - start:.1f} s; expected errors "
          f"{sum(w.expected_errors for w in workers)}; whole-prompt hits {hits}; stats {stats}; "
          f"{total}")


def test_stress_catches_a_wrong_record():
    """The check can fail: a record that differs from the cache's tokens is reported."""
    def sabotage(worker, n):
        if worker.index == 1 and n == 20 and worker.seqs:
            worker.seqs[next(iter(worker.seqs))].tokens[-1] += 1000  # one token id differs

    _, workers = run_stress(2, ops=60, seed=3, sabotage=sabotage)
    assert workers[0].error is None
    assert isinstance(workers[1].error, AssertionError)
    assert "!= record" in str(workers[1].error)


@pytest.mark.parametrize("what", ["kv", "computed"])
def test_stress_catches_wrong_kv_or_computed(what):
    """A K/V value written behind the record's back, or a computed count off by one, is reported."""
    def sabotage(worker, n):
        if n != 20 or not worker.seqs:
            return
        for sid, q in worker.seqs.items():
            if not q.swapped and q.computed:
                if what == "computed":
                    q.computed -= 1
                else:
                    k, v = kv_values([0], [q.tokens[0] + 1], 0)
                    worker.cache.write_kv(0, worker.cache.slot_mapping(sid, 0, 1), k, v)
                    worker.rng = np.random.default_rng(0)  # gather_kv checks in 30% of verifies
                return

    for seed in range(5):
        _, workers = run_stress(1, ops=200, seed=seed, sabotage=sabotage)
        if workers[0].error is not None:
            break
    assert isinstance(workers[0].error, AssertionError), workers[0].error
