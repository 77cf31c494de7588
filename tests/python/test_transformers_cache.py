"""FerrumCache inside transformers' generate: greedy outputs token-identical to DynamicCache + SDPA
(eager for Gemma2's soft cap) with float32 storage, for single prompts, left-padded batches, beam
search, num_return_sequences, assisted decoding (crop), and a second call that reuses a cached
prefix. Tiny random models (tests/python/hf_models.py); no downloads."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import hf_models  # noqa: E402  (tests/python/hf_models.py)

hf_models.require("torch", "transformers")
import torch  # noqa: E402

import ferrum_kv as fkv  # noqa: E402
from ferrum_kv.integrations.transformers import FerrumCache  # noqa: E402
from ferrum_kv.integrations.transformers._model import kernel_threads  # noqa: E402

NEW = 10


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, hf_models.VOCAB, (n,), generator=g) for n in lengths]


def left_padded(token_lists):
    """input_ids and attention_mask [B, max_len], pads (id 0) on the left."""
    width = max(len(t) for t in token_lists)
    ids = torch.zeros((len(token_lists), width), dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        ids[row, width - len(tokens):] = tokens
        mask[row, width - len(tokens):] = 1
    return ids, mask


def generate(model, implementation, ids, mask, cache=None, **kwargs):
    model.set_attn_implementation(implementation)
    kwargs.setdefault("max_new_tokens", NEW)
    extra = {} if cache is None else {"cache": cache}
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, do_sample=False, **extra, **kwargs)


def compare(model, ids, mask, num_blocks=64, dtype="float32", **kwargs):
    """(reference output, FerrumCache output, the cache)."""
    ref = generate(model, hf_models.reference_implementation(model), ids, mask, **kwargs)
    cache = FerrumCache(model, num_blocks=num_blocks, dtype=dtype)
    out = generate(model, "ferrum", ids, mask, cache, **kwargs)
    cache.kv_cache.check_invariants()
    return ref, out, cache


@pytest.fixture(scope="module", params=sorted(hf_models.MODELS))
def model(request):
    return hf_models.MODELS[request.param]()


def test_single_prompt_matches_reference(model):
    (tokens,) = prompts([41])
    ids, mask = left_padded([tokens])
    ref, out, cache = compare(model, ids, mask)
    assert out.tolist() == ref.tolist()
    # Only the paged cache holds K/V: prompt + generated tokens but the last one (never run).
    assert cache.kv_cache.num_tokens(cache.seq_ids[0]) == 41 + NEW - 1
    assert cache.get_seq_length() == 41 + NEW - 1


@pytest.fixture
def thread_counts():
    """Restores torch's and ferrum_kv's thread counts after the test."""
    torch_threads, kernel_threads = torch.get_num_threads(), fkv.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    fkv.set_num_threads(kernel_threads)


@pytest.mark.parametrize("torch_threads, library_threads, expected",
                         [(2, 2, 1), (1, 2, 2), (2, 4, 3), (8, 2, 1), (1, 1, 1)])
def test_kernel_threads_leave_torchs_threads_their_cpus(thread_counts, torch_threads,
                                                        library_threads, expected):
    torch.set_num_threads(torch_threads)
    fkv.set_num_threads(library_threads)
    assert kernel_threads() == expected


def test_multithreaded_kernels_match_reference(thread_counts):
    """torch on one thread leaves the kernels several: the output is the same."""
    torch.set_num_threads(1)
    fkv.set_num_threads(3)
    assert kernel_threads() == 3
    model = hf_models.MODELS["llama"]()
    ids, mask = left_padded(prompts([37, 23, 50], seed=3))
    ref, out, _ = compare(model, ids, mask)
    assert out.tolist() == ref.tolist()


def test_left_padded_batch_matches_reference_and_stores_no_pads(model):
    lengths = [37, 12, 50, 29]
    ids, mask = left_padded(prompts(lengths, seed=1))
    ref, out, cache = compare(model, ids, mask)
    assert out.tolist() == ref.tolist()
    for seq_id, length, tokens in zip(cache.seq_ids, lengths, prompts(lengths, seed=1)):
        stored = cache.kv_cache.tokens(seq_id)
        assert len(stored) == length + NEW - 1
        np.testing.assert_array_equal(stored[:length], tokens.numpy())


@pytest.mark.parametrize("dtype, tolerance",
                         [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 5e-2)])
def test_prompt_logits_match_reference(model, dtype, tolerance):
    """Logits of a left-padded prompt batch (one forward pass), relative to their largest
    magnitude: float32 storage to rounding, float16 / bfloat16 K/V within their precision. (Sensitive where
    greedy tokens are not: dropping the window or the soft cap moves these by whole units.)"""
    ids, mask = left_padded(prompts([33, 20], seed=2))
    model.set_attn_implementation(hf_models.reference_implementation(model))
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("ferrum")
    cache = FerrumCache(model, num_blocks=32, dtype=dtype)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, cache=cache, use_cache=True).logits
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max().item() < tolerance * ref[real].abs().max().item()


def test_prefix_reused_across_generate_calls():
    model = hf_models.llama()
    system = prompts([48], seed=3)[0]
    first = torch.cat([system, prompts([9], seed=4)[0]])[None]
    second = torch.cat([system, prompts([14], seed=5)[0]])[None]
    kv = fkv.PagedKvCache(FerrumCache.config_for(model, num_blocks=64))
    out1 = generate(model, "ferrum", first, torch.ones_like(first), FerrumCache(model, kv_cache=kv))
    before = kv.stats()
    cache = FerrumCache(model, kv_cache=kv)
    out2 = generate(model, "ferrum", second, torch.ones_like(second), cache)
    after = kv.stats()
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 48  # 3 full blocks
    ref1 = generate(model, "sdpa", first, torch.ones_like(first))
    ref2 = generate(model, "sdpa", second, torch.ones_like(second))
    assert out1.tolist() == ref1.tolist() and out2.tolist() == ref2.tolist()
    kv.check_invariants()


def test_prefix_hits_cut_the_prefill():
    """The model runs only the uncached columns: a hook counts what reaches the embedding."""
    model = hf_models.llama()
    system = prompts([40], seed=6)[0]
    kv = fkv.PagedKvCache(FerrumCache.config_for(model, num_blocks=64))
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: seen.append(args[0].shape[1]))
    try:
        for suffix_seed in (7, 8):
            ids = torch.cat([system, prompts([6], seed=suffix_seed)[0]])[None]
            generate(model, "ferrum", ids, torch.ones_like(ids), FerrumCache(model, kv_cache=kv),
                     max_new_tokens=2)
    finally:
        hook.remove()
    assert seen == [46, 1, 46 - 32, 1]  # second call: the 2 full blocks of the prompt cached


def test_beam_search_matches_reference(model):
    ids, mask = left_padded(prompts([30, 21], seed=9))
    ref, out, cache = compare(model, ids, mask, num_blocks=128, num_beams=3,
                              num_return_sequences=2)
    assert out.tolist() == ref.tolist()
    stats = cache.stats()
    # Beams share blocks: 6 rows of ~39 tokens would take 18+ blocks without sharing.
    assert stats["used_blocks"] < 6 * 3


def test_num_return_sequences_forks_the_prompt():
    model = hf_models.llama()
    ids, mask = left_padded(prompts([40], seed=10))
    model.set_attn_implementation("ferrum")
    kv = fkv.PagedKvCache(FerrumCache.config_for(model, num_blocks=64))
    widths = []  # columns reaching the embedding, per pass
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: widths.append(args[0].shape[1]))
    caches = [FerrumCache(model, kv_cache=kv) for _ in range(2)]
    try:
        for cache in caches:
            with torch.no_grad():
                out = model.generate(ids, attention_mask=mask, cache=cache, do_sample=True,
                                     top_k=5, num_return_sequences=3, max_new_tokens=4)
            assert out.shape[0] == 3
    finally:
        hook.remove()
    for cache in caches:
        tables = [kv.block_table(s) for s in cache.seq_ids]
        # The two full prompt blocks are the same blocks in all three sequences.
        assert all(t[:2].tolist() == tables[0][:2].tolist() for t in tables)
    # The second call's forked rows share the first call's cached blocks: 32 columns cut.
    assert widths == [40, 1, 1, 1, 40 - 32, 1, 1, 1]
    kv.check_invariants()


def test_assisted_decoding_crop_matches_reference():
    model, assistant = hf_models.llama(), hf_models.llama()
    with torch.no_grad():  # a different assistant: some candidates are rejected (crop)
        for p in assistant.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, mask = left_padded(prompts([35], seed=11))
    ref = generate(model, "sdpa", ids, mask, max_new_tokens=16)
    cache = FerrumCache(model, num_blocks=64)
    out = generate(model, "ferrum", ids, mask, cache, max_new_tokens=16, assistant_model=assistant)
    assert out.tolist() == ref.tolist()
    cache.kv_cache.check_invariants()


def test_crop_shares_the_kept_blocks():
    model = hf_models.llama()
    ids, mask = left_padded(prompts([40], seed=13))
    cache = FerrumCache(model, num_blocks=64)
    generate(model, "ferrum", ids, mask, cache, max_new_tokens=4)
    kv = cache.kv_cache
    (seq,) = cache._rows
    table, block = kv.block_table(seq), kv.config.block_size
    allocated = kv.stats()["blocks_allocated"]
    cache.crop(20 - cache.get_seq_length())
    (kept,) = cache._rows
    assert len(kv) == 1 and cache.get_seq_length() == 20
    assert kv.tokens(kept).tolist() == ids[0, :20].tolist()
    assert kv.block_table(kept).tolist() == table[:-(-20 // block)].tolist()  # shared, not copied
    assert kv.stats()["blocks_allocated"] == allocated
    kv.check_invariants()


def test_reset_and_garbage_collection_free_the_sequences():
    model = hf_models.llama()
    kv = fkv.PagedKvCache(FerrumCache.config_for(model, num_blocks=64))
    ids, mask = left_padded(prompts([20, 30], seed=12))
    cache = FerrumCache(model, kv_cache=kv)
    generate(model, "ferrum", ids, mask, cache, max_new_tokens=3)
    assert len(kv) == 2
    cache.reset()
    assert len(kv) == 0 and cache.get_seq_length() == 0
    generate(model, "ferrum", ids, mask, cache, max_new_tokens=3)  # usable again
    assert len(kv) == 2
    del cache
    gc.collect()
    assert len(kv) == 0
    kv.check_invariants()


def test_errors():
    model = hf_models.llama()
    with pytest.raises(ValueError, match="exactly one"):
        FerrumCache(model)
    kv = fkv.PagedKvCache(FerrumCache.config_for(model, num_blocks=8))
    with pytest.raises(ValueError, match="exactly one"):
        FerrumCache(model, num_blocks=8, kv_cache=kv)
    other = fkv.PagedKvCache(fkv.CacheConfig(num_layers=3, num_kv_heads=2, head_dim=16,
                                             block_size=16, num_blocks=8))
    with pytest.raises(ValueError, match="do not match"):
        FerrumCache(model, kv_cache=other)
    with pytest.raises(TypeError, match="transformers model"):
        FerrumCache(object(), num_blocks=8)
    ids = torch.randint(2, 50, (1, 20))
    model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="set_attn_implementation"):
        model.generate(ids, cache=FerrumCache(model, kv_cache=kv), max_new_tokens=2)
    assert len(kv) == 0
    model.set_attn_implementation("ferrum")
    with pytest.raises(RuntimeError, match="only inside generate"):
        with torch.no_grad():
            model(ids)  # no FerrumCache
    cache = FerrumCache(model, kv_cache=kv)
    with pytest.raises(fkv.OutOfBlocksError):
        model.generate(torch.randint(2, 50, (1, 200)), cache=cache, max_new_tokens=2)
    with pytest.raises(fkv.InvalidStateError, match="reset"):
        model.generate(ids, cache=cache, max_new_tokens=2)
    cache.reset()
    with pytest.raises(ValueError, match="negative"):
        cache.crop(3)
    kv.check_invariants()
