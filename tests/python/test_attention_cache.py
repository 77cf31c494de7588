"""The public kernels over a PagedKvCache (paged_attention_decode / _prefill): parity with a
float64 NumPy attention computed from gather_kv, i.e. through a path that shares no code with the
kernels' table walk, across forks, copy-on-write, prefix hits and swaps."""

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv import reference as ref

HEADS_KV, GROUP, DIM, BS = 2, 4, 64, 16


def attend(q, k, v, scale):
    """q: [Hq, D] float64, k/v: [T, Hkv, D]: causal-free softmax attention of one query row."""
    out = np.empty_like(q)
    for h in range(q.shape[0]):
        kh, vh = k[:, h // GROUP], v[:, h // GROUP]
        logits = kh @ q[h] * scale
        p = np.exp(logits - logits.max())
        out[h] = (p / p.sum()) @ vh
    return out


def setup(dtype, rng, prefix_caching=False):
    cfg = fkv.CacheConfig(num_layers=2, num_kv_heads=HEADS_KV, head_dim=DIM, block_size=BS,
                          num_blocks=64, num_host_blocks=16, dtype=dtype,
                          enable_prefix_caching=prefix_caching)
    return fkv.PagedKvCache(cfg)


def write(cache, seq_id, start, rng):
    n = cache.num_tokens(seq_id)
    for layer in range(2):
        k = rng.standard_normal((n - start, HEADS_KV, DIM)).astype(np.float32)
        v = rng.standard_normal((n - start, HEADS_KV, DIM)).astype(np.float32)
        cache.write_kv(layer, cache.slot_mapping(seq_id, start, n), k, v)
    cache.mark_computed(seq_id, n)


def gathered(cache, seq_id, layer, dtype):
    k, v = cache.gather_kv(seq_id, layer)
    return ref.storage_to_float32(k, dtype).astype(np.float64), ref.storage_to_float32(v, dtype).astype(np.float64)


def rel_err(out, expected):
    return np.linalg.norm(out - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_decode_over_forked_swapped_and_prefix_hit_sequences(dtype):
    rng = np.random.default_rng(0)
    cache = setup(dtype, rng, prefix_caching=True)
    prompt = rng.integers(0, 1000, 70)
    cache.add_sequence(1, prompt)
    write(cache, 1, 0, rng)
    assert cache.add_sequence(2, prompt) == 64  # prefix hit
    write(cache, 2, 64, rng)
    cache.fork(1, 3)
    cache.append_tokens(3, [5])  # copy-on-write of the shared tail
    write(cache, 3, 70, rng)
    cache.add_sequence(4, rng.integers(0, 1000, 1))
    write(cache, 4, 0, rng)
    cache.swap_out(4)
    cache.swap_in(4)
    ids = [1, 2, 3, 4, 3]
    q = (rng.standard_normal((len(ids), HEADS_KV * GROUP, DIM)) * 2).astype(np.float32)
    out = np.full_like(q, np.nan)
    result = fkv.paged_attention_decode(q, cache, 1, ids, out=out)
    assert result is out and not np.isnan(out).any()
    scale = 1 / np.sqrt(DIM)
    expected = np.stack([attend(q[i].astype(np.float64), *gathered(cache, s, 1, dtype), scale)
                         for i, s in enumerate(ids)])
    assert rel_err(out, expected) < 1e-5


def test_chunked_prefill_over_a_cached_prefix():
    rng = np.random.default_rng(1)
    cache = setup("float32", rng)
    cache.add_sequence(1, rng.integers(0, 1000, 40))  # 40 cached tokens
    write(cache, 1, 0, rng)
    cache.append_tokens(1, rng.integers(0, 1000, 9))  # a chunk of 9 new tokens
    write(cache, 1, 40, rng)
    cache.add_sequence(2, rng.integers(0, 1000, 5))  # a fresh prompt
    write(cache, 2, 0, rng)
    query_lens = [9, 5]
    q = rng.standard_normal((14, HEADS_KV * GROUP, DIM)).astype(np.float32)
    out = fkv.paged_attention_prefill(q, cache, 0, [1, 2], np.array(query_lens, np.int64), scale=0.2)
    rows = []
    for seq_id, n_q in zip([1, 2], query_lens):
        k, v = gathered(cache, seq_id, 0, "float32")
        total = len(k)
        for j in range(n_q):
            pos = total - n_q + j
            rows.append(attend(q[len(rows)].astype(np.float64), k[: pos + 1], v[: pos + 1], 0.2))
    assert rel_err(out, np.stack(rows)) < 1e-5


def test_chunk_in_the_middle_of_an_allocated_prompt():
    """context_lens: a prompt added whole and prefilled over two steps; the first chunk must not
    see the second chunk's (not yet written) K/V."""
    rng = np.random.default_rng(3)
    cache = setup("float32", rng)
    cache.add_sequence(1, rng.integers(0, 1000, 30))
    cache.add_sequence(2, rng.integers(0, 1000, 7))
    k = rng.standard_normal((30, HEADS_KV, DIM)).astype(np.float32)
    v = rng.standard_normal((30, HEADS_KV, DIM)).astype(np.float32)
    cache.write_kv(0, cache.slot_mapping(1, 0, 20), k[:20], v[:20])  # chunks: tokens 0-7, 8-19
    cache.mark_computed(1, 8)
    write(cache, 2, 0, rng)
    q = rng.standard_normal((12 + 7, HEADS_KV * GROUP, DIM)).astype(np.float32)
    out = fkv.paged_attention_prefill(q, cache, 0, [1, 2], [12, 7], context_lens=[20, 7])
    k2, v2 = gathered(cache, 2, 0, "float32")
    expected = [attend(q[j].astype(np.float64), k[: 8 + j + 1].astype(np.float64),
                       v[: 8 + j + 1].astype(np.float64), 1 / np.sqrt(DIM)) for j in range(12)]
    expected += [attend(q[12 + j].astype(np.float64), k2[: j + 1], v2[: j + 1], 1 / np.sqrt(DIM))
                 for j in range(7)]
    assert rel_err(out, np.stack(expected)) < 1e-5
    for bad in ([31, 7], [20], [0, 7]):
        with pytest.raises(ValueError, match="context_lens"):
            fkv.paged_attention_prefill(q, cache, 0, [1, 2], [12, 7], context_lens=bad)


def test_bad_arguments_raise():
    rng = np.random.default_rng(2)
    cache = setup("float32", rng)
    cache.add_sequence(1, [1, 2, 3])
    cache.mark_computed(1, 3)
    q = np.ones((1, HEADS_KV * GROUP, DIM), np.float32)
    with pytest.raises(KeyError):
        fkv.paged_attention_decode(q, cache, 0, [9])
    with pytest.raises(ValueError):
        fkv.paged_attention_decode(q[:, :3], cache, 0, [1])  # 3 heads: not a multiple of 2
    with pytest.raises(ValueError):
        fkv.paged_attention_decode(q.astype(np.float64), cache, 0, [1])
    with pytest.raises(IndexError):
        fkv.paged_attention_decode(q, cache, 5, [1])
    with pytest.raises(ValueError):
        q4 = np.ones((4, HEADS_KV * GROUP, DIM), np.float32)
        fkv.paged_attention_prefill(q4, cache, 0, [1], [4])  # 4 query tokens, 3 in the sequence
    with pytest.raises(ValueError):
        fkv.paged_attention_prefill(q, cache, 0, [1], [-1])
