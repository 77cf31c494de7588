"""Model-based test of PagedKvCache: long random operation sequences (add, append, append_batch,
fork, free, swap out/in, write_kv, gather) against a pure-Python model that keeps every
sequence's K/V as NumPy arrays and predicts block usage, including runs that exhaust the pool."""

import itertools

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv import reference as ref

LAYERS, HEADS, DIM, BLOCK = 2, 2, 3, 4


class Model:
    """Sequences as token lists + K/V arrays; blocks as abstract shared objects with ref counts."""

    def __init__(self, num_blocks, num_host_blocks, dtype):
        self.num_blocks, self.num_host_blocks, self.dtype = num_blocks, num_host_blocks, dtype
        self.seqs = {}  # seq_id -> dict(tokens, blocks, swapped, k[layer], v[layer])
        self.refs = {}  # block object -> ref count
        self.new_block = itertools.count()

    def used(self, swapped):
        return len({b for s in self.seqs.values() if s["swapped"] == swapped for b in s["blocks"]})

    def free_blocks(self):
        return self.num_blocks - self.used(False)

    def free_host_blocks(self):
        return self.num_host_blocks - self.used(True)

    def blocks_to_append(self, seq, n):
        if n == 0:
            return 0
        count = len(seq["tokens"])
        new = -(-(count + n) // BLOCK) - len(seq["blocks"])
        shared_tail = count % BLOCK != 0 and self.refs[seq["blocks"][-1]] > 1
        return new + shared_tail

    def take(self, n):
        blocks = [next(self.new_block) for _ in range(n)]
        for b in blocks:
            self.refs[b] = 1
        return blocks

    def drop(self, blocks):
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                del self.refs[b]

    def append(self, seq, tokens, k, v):
        if not tokens:
            return
        if len(seq["tokens"]) % BLOCK != 0 and self.refs[seq["blocks"][-1]] > 1:
            self.drop(seq["blocks"][-1:])
            seq["blocks"][-1] = self.take(1)[0]
        new = -(-(len(seq["tokens"]) + len(tokens)) // BLOCK) - len(seq["blocks"])
        seq["blocks"] += self.take(new)
        seq["tokens"] += list(tokens)
        for layer in range(LAYERS):
            seq["k"][layer] = np.concatenate([seq["k"][layer], k[layer]])
            seq["v"][layer] = np.concatenate([seq["v"][layer], v[layer]])


def random_kv(rng, n, dtype):
    shape = (LAYERS, n, HEADS, DIM)
    k = rng.standard_normal(shape).astype(np.float32)
    v = rng.standard_normal(shape).astype(np.float32)
    return k, v, ref.round_to_storage(k, dtype), ref.round_to_storage(v, dtype)


def write_tokens(cache, slots, k, v):
    for layer in range(LAYERS):
        cache.write_kv(layer, slots, k[layer], v[layer])


def device_slots(cache, model, seq_id):
    """(slots of every token, the model's block of each token) of a resident sequence, else
    None: taken before a call that releases its device blocks."""
    seq = model.seqs[seq_id]
    if seq["swapped"]:
        return None
    n = len(seq["tokens"])
    return cache.slot_mapping(seq_id, 0, n), [seq["blocks"][pos // BLOCK] for pos in range(n)]


def check_stale_slots_refused(cache, model, taken):
    """write_kv into a slot whose block the last call released (no table holds it any more)
    raises InvalidStateError and writes nothing; returns whether there was such a slot."""
    if taken is None:
        return False
    slots, blocks = taken
    released = [slot for slot, block in zip(slots, blocks) if block not in model.refs]
    if not released:
        return False  # every block is still shared with a fork
    k = np.ones((1, HEADS, DIM), np.float32)
    with pytest.raises(fkv.InvalidStateError):
        cache.write_kv(0, np.array(released[:1], np.int32), k, k)
    return True


def check_all(cache, model):
    cache.check_invariants()
    stats = cache.stats()
    assert stats["free_blocks"] == model.free_blocks()
    assert stats["free_host_blocks"] == model.free_host_blocks()
    assert stats["num_sequences"] == len(model.seqs) == len(cache)
    for seq_id, seq in model.seqs.items():
        assert cache.num_tokens(seq_id) == len(seq["tokens"])
        assert cache.tokens(seq_id).tolist() == seq["tokens"]
        assert cache.is_swapped(seq_id) == seq["swapped"]
        for layer in range(LAYERS):
            k, v = cache.gather_kv(seq_id, layer)
            np.testing.assert_array_equal(ref.storage_to_float32(k, model.dtype), seq["k"][layer])
            np.testing.assert_array_equal(ref.storage_to_float32(v, model.dtype), seq["v"][layer])


def run_random_operations(seed, steps, dtype, num_blocks=24, num_host_blocks=12):
    rng = np.random.default_rng(seed)
    cfg = fkv.CacheConfig(num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, block_size=BLOCK,
                          num_blocks=num_blocks, num_host_blocks=num_host_blocks, dtype=dtype)
    cache = fkv.PagedKvCache(cfg)
    model = Model(num_blocks, num_host_blocks, dtype)
    next_id = itertools.count()
    counts = dict.fromkeys(["oob", "cow", "swap", "batch", "stale"], 0)

    def resident():
        return [s for s, q in model.seqs.items() if not q["swapped"]]

    for _ in range(steps):
        op = rng.choice(["add", "append", "batch", "fork", "free", "swap_out", "swap_in"],
                        p=[0.2, 0.25, 0.15, 0.12, 0.12, 0.08, 0.08])
        if op == "add":
            seq_id = next(next_id)
            n = int(rng.integers(1, 14))
            tokens = rng.integers(0, 1000, n).tolist()
            k, v, k_stored, v_stored = random_kv(rng, n, dtype)
            assert cache.can_allocate(tokens) == (-(-n // BLOCK) <= model.free_blocks())
            assert cache.cached_prefix_len(tokens) == 0  # no prefix caching here
            if -(-n // BLOCK) > model.free_blocks():
                with pytest.raises(fkv.OutOfBlocksError):
                    cache.add_sequence(seq_id, tokens)
                counts["oob"] += 1
            else:
                assert cache.add_sequence(seq_id, tokens) == 0
                model.seqs[seq_id] = dict(tokens=[], blocks=[], swapped=False,
                                          k=[np.zeros((0, HEADS, DIM), np.float32)] * LAYERS,
                                          v=[np.zeros((0, HEADS, DIM), np.float32)] * LAYERS)
                model.seqs[seq_id]["blocks"] = model.take(-(-n // BLOCK))
                model.seqs[seq_id]["tokens"] = tokens
                model.seqs[seq_id]["k"] = list(k_stored)
                model.seqs[seq_id]["v"] = list(v_stored)
                write_tokens(cache, cache.slot_mapping(seq_id, 0, n), k, v)
        elif op == "append" and resident():
            seq_id = int(rng.choice(resident()))
            seq = model.seqs[seq_id]
            n = int(rng.integers(0, 7))
            tokens = rng.integers(0, 1000, n).tolist()
            k, v, k_stored, v_stored = random_kv(rng, n, dtype)
            needed = model.blocks_to_append(seq, n)
            assert cache.can_append(seq_id, n) == (needed <= model.free_blocks())
            if needed > model.free_blocks():
                with pytest.raises(fkv.OutOfBlocksError):
                    cache.append_tokens(seq_id, tokens)
                counts["oob"] += 1
            else:
                start = len(seq["tokens"])
                counts["cow"] += start % BLOCK != 0 and n > 0 and model.refs[seq["blocks"][-1]] > 1
                cache.append_tokens(seq_id, tokens)
                model.append(seq, tokens, k_stored, v_stored)
                write_tokens(cache, cache.slot_mapping(seq_id, start, start + n), k, v)
        elif op == "batch" and resident():
            ids = rng.permutation(resident())[: int(rng.integers(1, 6))].tolist()
            tokens = rng.integers(0, 1000, len(ids)).tolist()
            k, v, k_stored, v_stored = random_kv(rng, len(ids), dtype)
            # Siblings sharing a partly filled block: the first copies, the second then owns it.
            needed, shared_tails = 0, {}
            for s in ids:
                q = model.seqs[s]
                if len(q["tokens"]) % BLOCK != 0:
                    tail = q["blocks"][-1]
                    shared_tails[tail] = shared_tails.get(tail, 0) + 1
                    needed += model.refs[tail] - shared_tails[tail] >= 1
                else:
                    needed += 1
            if needed > model.free_blocks():
                with pytest.raises(fkv.OutOfBlocksError):
                    cache.append_batch(ids, tokens)
                counts["oob"] += 1
            else:
                cache.append_batch(np.array(ids, np.int64), np.array(tokens, np.int32))
                for i, s in enumerate(ids):
                    model.append(model.seqs[s], [tokens[i]], k_stored[:, i:i + 1], v_stored[:, i:i + 1])
                metadata = cache.batch_metadata(ids)
                write_tokens(cache, metadata.slot_mapping, k, v)
                counts["batch"] += 1
        elif op == "fork" and resident():
            parent = int(rng.choice(resident()))
            child = next(next_id)
            cache.fork(parent, child)
            p = model.seqs[parent]
            model.seqs[child] = dict(tokens=list(p["tokens"]), blocks=list(p["blocks"]),
                                     swapped=False, k=list(p["k"]), v=list(p["v"]))
            for b in p["blocks"]:
                model.refs[b] += 1
        elif op == "free" and model.seqs:
            seq_id = int(rng.choice(list(model.seqs)))
            taken = device_slots(cache, model, seq_id)
            cache.free_sequence(seq_id)
            model.drop(model.seqs.pop(seq_id)["blocks"])
            counts["stale"] += check_stale_slots_refused(cache, model, taken)
        elif op in ("swap_out", "swap_in"):
            to_host = op == "swap_out"
            candidates = [s for s, q in model.seqs.items() if q["swapped"] != to_host]
            if candidates:
                seq_id = int(rng.choice(candidates))
                seq = model.seqs[seq_id]
                room = model.free_host_blocks() if to_host else model.free_blocks()
                swap = cache.swap_out if to_host else cache.swap_in
                if len(seq["blocks"]) > room:
                    with pytest.raises(fkv.OutOfBlocksError):
                        swap(seq_id)
                    counts["oob"] += 1
                else:
                    taken = device_slots(cache, model, seq_id)
                    swap(seq_id)
                    model.drop(seq["blocks"])
                    seq["blocks"] = model.take(len(seq["blocks"]))
                    seq["swapped"] = to_host
                    counts["swap"] += 1
                    counts["stale"] += check_stale_slots_refused(cache, model, taken)
        check_all(cache, model)
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_operations_float32(seed):
    counts = run_random_operations(seed, steps=700, dtype="float32")
    # The runs really exercise the interesting paths.
    assert all(count > 0 for count in counts.values()), counts


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_random_operations_16_bit_storage(dtype):
    run_random_operations(seed=11, steps=300, dtype=dtype)


@pytest.mark.parametrize("dtype", ["int8", "fp8_e4m3", "fp8_e5m2", "int4"])
def test_random_operations_quantized_storage(dtype):
    # fork / copy-on-write, swap, free, write_kv and gather_kv on quantized blocks: gather_kv
    # equals the NumPy quantize -> dequantize of what was written, bit for bit.
    counts = run_random_operations(seed=13, steps=300, dtype=dtype)
    assert all(count > 0 for count in counts.values()), counts


def test_random_operations_with_a_roomy_pool():
    run_random_operations(seed=5, steps=400, dtype="float32", num_blocks=200, num_host_blocks=100)
