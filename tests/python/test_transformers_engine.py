"""Engine: continuous batching of a transformers model over the demo's scheduler. Its greedy
outputs equal transformers' own per-prompt generate (DynamicCache + SDPA, eager for Gemma2),
through chunked prefill, prefix caching, and preemption by recompute and by swap."""

from __future__ import annotations

import dataclasses

import pytest

import hf_models  # noqa: E402  (tests/python/hf_models.py)

hf_models.require("torch", "transformers")
import torch  # noqa: E402

from ferrum_kv.integrations.transformers import Engine  # noqa: E402

NEW = 8


def prompt_lists(lengths, seed=0, prefix=()):
    g = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(2, hf_models.VOCAB, (n,), generator=g).tolist()
            for n in lengths]


def reference(model, prompts, max_new_tokens=NEW):
    model.set_attn_implementation(hf_models.reference_implementation(model))
    replies = []
    with torch.no_grad():
        for prompt in prompts:
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                                 do_sample=False)
            replies.append(out[0, len(prompt):].tolist())
    return replies


@pytest.fixture(scope="module", params=sorted(hf_models.MODELS))
def model(request):
    return hf_models.MODELS[request.param]()


def test_engine_matches_per_prompt_generate(model):
    prompts = prompt_lists([30, 45, 7, 60, 19, 33], seed=1)
    expected = reference(model, prompts)
    # A budget of 24 rows chunks every prompt but the shortest; 3 sequences at a time.
    engine = Engine(model, num_blocks=64, token_budget=24, max_num_seqs=3)
    assert engine.generate(prompts, max_new_tokens=NEW) == expected
    assert engine.last_scheduler.preemptions == 0
    assert len(engine.cache) == 0
    engine.cache.check_invariants()


@pytest.mark.parametrize("order, first", [("fcfs", 0), ("shortest_prefill", 2)])
def test_admission_order(order, first):
    """Budget 24: in arrival order prompt 0 (30 tokens) is prefilled first and its first token
    comes first (step 1); shortest first, prompt 2 (7 tokens) is, in step 0. Same replies."""
    model = hf_models.llama()
    prompts = prompt_lists([30, 45, 7, 60, 19, 33], seed=1)
    expected = reference(model, prompts)
    engine = Engine(model, num_blocks=64, token_budget=24, max_num_seqs=3, admission_order=order)
    assert engine.scheduler_config.admission_order == order
    events = list(engine.stream(prompts, max_new_tokens=NEW))
    assert events[0][0] == first
    assert [[t for i, t in events if i == k] for k in range(len(prompts))] == expected
    steps = {s.request.request_id: s.first_token_step for s in engine.last_scheduler.finished}
    assert steps[first] == min(steps.values()) == (1 if order == "fcfs" else 0)
    engine.cache.check_invariants()


@pytest.mark.parametrize("num_host_blocks", [0, 16])
def test_preemption_keeps_outputs(num_host_blocks):
    model = hf_models.llama()
    prompts = prompt_lists([40, 35, 44, 38, 30, 41], seed=2)
    expected = reference(model, prompts, max_new_tokens=12)
    # 14 blocks of 16 tokens: six sequences of ~50 tokens (4 blocks each) cannot all run.
    engine = Engine(model, num_blocks=14, num_host_blocks=num_host_blocks, token_budget=64,
                    max_num_seqs=6, enable_prefix_caching=False)
    assert engine.generate(prompts, max_new_tokens=12) == expected
    scheduler = engine.last_scheduler
    if num_host_blocks:
        assert scheduler.preemptions_by_swap > 0
    else:
        assert scheduler.preemptions_by_recompute > 0
    engine.cache.check_invariants()


@pytest.mark.parametrize("max_num_seqs, in_step", [(1, True), (4, False), (4, True)])
def test_shared_system_prompt_is_prefilled_once(max_num_seqs, in_step):
    """One at a time (the later three hit the first one's prefix blocks), or all four in the
    first step's budget: the later three wait for those blocks, then hit them, or (in_step) share
    them in the first step while the first one computes them."""
    model = hf_models.qwen2()
    system = prompt_lists([64], seed=3)[0]
    prompts = prompt_lists([5, 17, 9, 23], seed=4, prefix=system)
    expected = reference(model, prompts)
    engine = Engine(model, num_blocks=64, token_budget=256, max_num_seqs=max_num_seqs)
    engine.scheduler_config = dataclasses.replace(engine.scheduler_config,
                                                  share_prefix_in_step=in_step)
    assert engine.generate(prompts, max_new_tokens=NEW) == expected
    scheduler = engine.last_scheduler
    shared = scheduler.shared_in_step_tokens
    assert shared == (3 * 64 if max_num_seqs == 4 and in_step else 0)
    assert engine.cache.stats()["prefix_hit_tokens"] == 3 * 64 - shared  # all 4 blocks each
    assert scheduler.computed_tokens == 64 + sum(len(p) - 64 for p in prompts) + 4 * (NEW - 1)
    if max_num_seqs == 4:
        assert {s.first_token_step for s in scheduler.finished} == ({0} if in_step else {0, 1})


def test_streaming_and_stop_token():
    model = hf_models.llama()
    prompts = prompt_lists([12, 25, 18], seed=5)
    expected = reference(model, prompts)
    engine = Engine(model, num_blocks=32)
    events = list(engine.stream(prompts, max_new_tokens=NEW))
    assert [[t for i, t in events if i == k] for k in range(3)] == expected
    assert len({i for i, _ in events[:3]}) > 1  # interleaved: prompts progress together
    seen = []
    stop = expected[1][3]
    replies = engine.generate(prompts, max_new_tokens=NEW, stop_token_id=stop,
                              on_token=lambda i, t: seen.append((i, t)), progress=True)
    for reply, full in zip(replies, expected):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert reply == full[:cut]
    assert sorted(seen) == sorted((i, t) for i, r in enumerate(replies) for t in r)


def test_errors():
    model = hf_models.llama()
    engine = Engine(model, num_blocks=4)
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.generate([])
    with pytest.raises(ValueError, match="non-empty"):
        engine.generate([[3, 4], []])
    with pytest.raises(ValueError, match="non-empty"):
        engine.generate([[3, -1]])
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([[3, 4]], max_new_tokens=0)
    with pytest.raises(ValueError, match="too small"):
        engine.generate([list(range(2, 90))], max_new_tokens=8)  # 96 tokens > 4 blocks of 16
    with pytest.raises(ValueError):
        Engine(model, num_blocks=4, token_budget=0)
    with pytest.raises(ValueError):
        Engine(model, num_blocks=4, dtype="float64")
    assert len(engine.cache) == 0
    model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="set_attn_implementation"):
        engine.generate([[3, 4]])
    assert len(engine.cache) == 0  # the failed call's sequences are freed
    for bad in ({"admission_order": "lpm"}, {"max_wait_steps": 0}):
        with pytest.raises(ValueError, match="admission_order|max_wait_steps"):
            Engine(model, num_blocks=4, **bad)
        assert model.config._attn_implementation == "sdpa"  # the model is left as it was
    model.set_attn_implementation("ferrum")
    stream = engine.stream([[5, 6, 7], [8, 9]], max_new_tokens=20)
    next(stream)
    stream.close()  # a consumer that stops reading
    assert len(engine.cache) == 0
    engine.cache.check_invariants()
