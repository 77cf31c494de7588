"""The scheduler's admission order (``SchedulerConfig.admission_order``): arrival order, or the
shortest remaining prefill first (prompt minus its prefix-cache hit) with aging. The expected
first-token steps below are worked out by hand from the rules (module docstring of
``ferrum_kv.demo.scheduler``): running prefills take the budget first, oldest first; then
waiting requests are admitted in the configured order, each with a first chunk of what is left.
With ``max_new_tokens=1`` a request finishes at its first token, so no decode rows interfere."""

import dataclasses

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv.demo import DemoOptions
from ferrum_kv.demo.model import Decoder
from ferrum_kv.demo.scheduler import Scheduler, SchedulerConfig, Status

from test_demo_scheduler import (BS, MODEL, FixedWorkload, assert_matches_reference, request,
                                 serve, shared_prefix_requests)


def new_scheduler(requests, **limits):
    model = Decoder(MODEL, seed=1)
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads, head_dim=MODEL.head_dim,
        block_size=BS, num_blocks=64, enable_prefix_caching=True))
    workload = FixedWorkload(requests)
    config = SchedulerConfig(record_logits=True, **limits)
    return Scheduler(model, cache, workload, config), workload


def first_token_steps(scheduler):
    return {s.request.request_id: s.first_token_step for s in scheduler.finished}


def uneven_requests(rng):
    """Distinct random prompts of 12, 4, 8 and 3 tokens (no prefix hits), one token each."""
    return [request(i, rng.integers(0, MODEL.vocab_size, n), 1)
            for i, n in enumerate([12, 4, 8, 3])]


def test_fcfs_admits_in_arrival_order():
    # Budget 8. Step 0: r0 gets 8 of 12. Step 1: r0's last 4 (first token), r1 all 4.
    # Step 2: r2's 8. Step 3: r3's 3.
    scheduler = serve(uneven_requests(np.random.default_rng(10)), num_blocks=64, token_budget=8,
                      admission_order="fcfs")
    assert first_token_steps(scheduler) == {0: 1, 1: 1, 2: 2, 3: 3}
    assert_matches_reference(scheduler)


def test_shortest_prefill_admits_the_shortest_first():
    # Order r3 (3), r1 (4), r2 (8), r0 (12); budget 8. Step 0: r3's 3 and r1's 4 (first tokens),
    # r2's first 1. Step 1: r2's last 7 (first token), r0's first 1. Step 2: r0 8 more.
    # Step 3: r0's last 3.
    scheduler = serve(uneven_requests(np.random.default_rng(10)), num_blocks=64, token_budget=8,
                      admission_order="shortest_prefill")
    assert first_token_steps(scheduler) == {0: 3, 1: 0, 2: 1, 3: 0}
    assert_matches_reference(scheduler)


def test_shortest_prefill_counts_the_prefix_cache_hit():
    """A request whose 16 leading tokens are cached (2 to compute) goes before an earlier one of
    10 tokens, though its prompt is longer (18)."""
    rng = np.random.default_rng(11)
    system = rng.integers(0, MODEL.vocab_size, 16)
    warm = request(0, np.concatenate([system, [7]]), 1)
    for order, expected in [("fcfs", {1: 1, 2: 1}), ("shortest_prefill", {1: 1, 2: 0})]:
        scheduler, workload = new_scheduler([warm], token_budget=8, admission_order=order)
        scheduler.run()  # 17 tokens in steps 0-2; its 4 full blocks stay cached
        assert scheduler.step_no == 3
        short = request(1, rng.integers(0, MODEL.vocab_size, 10), 1)
        hit = request(2, np.concatenate([system, [5, 6]]), 1)
        assert scheduler.cache.cached_prefix_len(hit.prompt) == 16
        workload.add(short)
        workload.add(hit)
        scheduler.run()
        # fcfs, step 3: short's 8; step 4: short's last 2, then hit's 2 (16 hit).
        # shortest_prefill, step 3: hit's 2, short's first 6; step 4: short's last 4.
        assert {i: s - 3 for i, s in first_token_steps(scheduler).items() if i} == expected
        assert scheduler.cache.stats()["prefix_hit_tokens"] == 16
        assert_matches_reference(scheduler)


@pytest.mark.parametrize("max_wait_steps, long_admitted, long_first_token", [
    (3, 3, 5),      # aged at step 0 + 3: admitted first, then 3 steps of 4 tokens
    (100, 8, 10),   # never aged while short requests keep coming (steps 0-7): after them
])
def test_aging_bounds_the_wait_of_a_long_request(max_wait_steps, long_admitted, long_first_token):
    """A 12-token request arrives with a stream of 4-token ones (one per step, steps 0-7); the
    budget (4) holds one short request per step. Shortest first starves the long one until it
    has waited ``max_wait_steps`` steps; then it goes first."""
    rng = np.random.default_rng(12)
    long = request(0, rng.integers(0, MODEL.vocab_size, 12), 1)
    scheduler, workload = new_scheduler([long], token_budget=4, max_wait_steps=max_wait_steps,
                                        admission_order="shortest_prefill")
    admitted = tracked = None
    while scheduler.step_no < 8 or not scheduler.done:
        if scheduler.step_no < 8:
            workload.add(request(1 + scheduler.step_no, rng.integers(0, MODEL.vocab_size, 4), 1))
        record = scheduler.step()
        scheduler.cache.check_invariants()
        tracked = tracked or next(s for s in scheduler.waiting if s.request is long)
        if admitted is None and tracked.status is not Status.WAITING:
            admitted = record.step
    steps = first_token_steps(scheduler)
    assert admitted == long_admitted
    assert steps[0] == long_first_token
    if max_wait_steps == 3:
        # Shorts 1-3 (steps 0-2) at once; short 4 (arrived at step 3) waits for the long one,
        # then every later short waits 3 steps too (aged: oldest first, one per step).
        assert [steps[i] for i in range(1, 9)] == [0, 1, 2, 6, 7, 8, 9, 10]
    else:
        assert [steps[i] for i in range(1, 9)] == list(range(8))
    assert_matches_reference(scheduler)


@pytest.mark.parametrize("order", ["fcfs", "shortest_prefill"])
@pytest.mark.parametrize("in_step", [False, True])
def test_requests_sharing_a_prefix_compute_it_once_in_either_order(order, in_step):
    # Prompts of 12 shared + 2, 1, 4, 3, 2, 1 own tokens, in that arrival order.
    requests = shared_prefix_requests(np.random.default_rng(4), 6)[::-1]
    scheduler = serve(requests, num_blocks=64, token_budget=128, admission_order=order,
                      share_prefix_in_step=in_step)
    # Whichever request goes first computes the 3 shared blocks; the 5 others reuse them: they
    # wait and hit them, or (in_step) fork them in the same step.
    reused = (scheduler.shared_in_step_tokens if in_step
              else scheduler.cache.stats()["prefix_hit_tokens"])
    assert reused == 5 * 12
    assert scheduler.computed_tokens == sum(len(r.prompt) for r in requests) - 5 * 12 + 6 * 2
    first_step = scheduler.history[0]
    # fcfs: the first to arrive (14 tokens); shortest first: the earliest of the 13-token ones.
    first = 14 if order == "fcfs" else 13
    if in_step:
        assert first_step.prefill_tokens == first + sum(len(r.prompt) - 12 for r in requests) - (
            first - 12)
        assert first_step.waiting == 0
    else:
        assert first_step.prefill_tokens == first and first_step.waiting == 5
    assert_matches_reference(scheduler)


def test_the_order_does_not_change_the_generated_tokens():
    """Uneven prompts, some sharing a prefix, a small budget and a cache small enough to preempt
    (recompute): the same greedy replies in either order."""
    rng = np.random.default_rng(13)
    system = rng.integers(0, MODEL.vocab_size, 8)
    requests = [request(i, np.concatenate([system if i % 2 else [], rng.integers(
        0, MODEL.vocab_size, n)]).astype(np.int32), 10) for i, n in enumerate([14, 3, 9, 21, 5, 2])]
    replies = {}
    for order in ("fcfs", "shortest_prefill"):
        scheduler = serve(requests, num_blocks=12, token_budget=10, admission_order=order)
        assert_matches_reference(scheduler)
        replies[order] = {s.request.request_id: s.generated.tolist() for s in scheduler.finished}
        if order == "fcfs":
            fcfs_steps = first_token_steps(scheduler)
        else:
            assert first_token_steps(scheduler) != fcfs_steps  # the orders did differ
        assert scheduler.preemptions_by_recompute > 0
    assert replies["fcfs"] == replies["shortest_prefill"]


@pytest.mark.parametrize("field, value, message", [
    ("admission_order", "lpm", "admission_order must be one of 'fcfs', 'shortest_prefill'"),
    ("admission_order", None, "admission_order must be one of"),
    ("max_wait_steps", 0, "max_wait_steps must be an int >= 1"),
    ("max_wait_steps", -5, "max_wait_steps must be an int >= 1"),
    ("max_wait_steps", 2.5, "max_wait_steps must be an int >= 1"),
    ("max_wait_steps", True, "max_wait_steps must be an int >= 1"),
])
def test_invalid_order_options_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**{field: value})
    config = SchedulerConfig(admission_order="fcfs", max_wait_steps=7)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config, **{field: value})
    assert (config.admission_order, config.max_wait_steps) == ("fcfs", 7)  # unchanged
    with pytest.raises(ValueError, match=message):
        DemoOptions(preset="tiny", **{field: value})
