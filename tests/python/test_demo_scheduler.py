"""The demo's continuous-batching scheduler: preemption and resume (swap, recompute), copy-on-write
through parallel sampling, prefix hits, and end-to-end agreement with the contiguous reference."""

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv.demo import DemoOptions, run_demo
from ferrum_kv.demo.model import Decoder
from ferrum_kv.demo.paged import PagedStepAttention
from ferrum_kv.demo.presets import MODEL_PRESETS
from ferrum_kv.demo.reference import verify
from ferrum_kv.demo.scheduler import Scheduler, SchedulerConfig
from ferrum_kv.demo.workload import Request

MODEL = MODEL_PRESETS["tiny"]
BS = 4


class FixedWorkload:
    """Explicit requests, all arriving at step 0 (the Workload interface the scheduler uses)."""

    def __init__(self, requests):
        self._pending = list(requests)
        self.finished_requests = []
        self.max_request_tokens = max(len(r.prompt) + r.max_new_tokens for r in requests)

    @property
    def done(self):
        return not self._pending

    def next_arrival_step(self):
        return 0 if self._pending else None

    def add(self, request):
        self._pending.append(request)

    def arrivals(self, step):
        arrived, self._pending = self._pending, []
        return arrived

    def finished(self, request, reply, step):
        self.finished_requests.append(request)


def request(request_id, prompt, max_new_tokens, n=1):
    return Request(request_id=request_id, prompt=np.asarray(prompt, np.int32),
                   max_new_tokens=max_new_tokens, n=n, arrival_step=0, session=request_id, turn=0)


def serve(requests, num_blocks, num_host_blocks=0, prefix_caching=True, **limits):
    model = Decoder(MODEL, seed=1)
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads, head_dim=MODEL.head_dim,
        block_size=BS, num_blocks=num_blocks, num_host_blocks=num_host_blocks,
        enable_prefix_caching=prefix_caching))
    workload = FixedWorkload(requests)
    scheduler = Scheduler(model, cache, workload, SchedulerConfig(record_logits=True, **limits))
    while not scheduler.done:
        scheduler.step()
        cache.check_invariants()
    assert len(cache) == 0 and len(workload.finished_requests) == len(requests)
    return scheduler


def assert_matches_reference(scheduler):
    report = verify(scheduler.model, scheduler.finished, "float32")
    assert report.ok, report.mismatches[:3]
    assert report.steps == sum(s.request.max_new_tokens for s in scheduler.finished)
    return report


def two_long_requests(rng):
    # 16-token prompts (4 blocks each) growing by 12 tokens (3 blocks each): 14 blocks > 12.
    return [request(0, rng.integers(0, MODEL.vocab_size, 16), 12),
            request(1, rng.integers(0, MODEL.vocab_size, 16), 12)]


def test_preemption_by_swap_and_resume():
    scheduler = serve(two_long_requests(np.random.default_rng(0)), num_blocks=12,
                      num_host_blocks=12)
    stats = scheduler.cache.stats()
    assert scheduler.preemptions_by_swap >= 1 and scheduler.preemptions_by_recompute == 0
    assert stats["swap_outs"] == stats["swap_ins"] == scheduler.preemptions_by_swap
    assert any(r.swapped for r in scheduler.history)
    # The later admitted request is the victim; the first one runs through.
    assert scheduler.finished[0].request.request_id == 0
    assert_matches_reference(scheduler)


def test_preemption_by_recompute_and_resume():
    scheduler = serve(two_long_requests(np.random.default_rng(0)), num_blocks=12)
    stats = scheduler.cache.stats()
    assert scheduler.preemptions_by_recompute >= 1 and scheduler.preemptions_by_swap == 0
    assert stats["swap_outs"] == 0
    # Recomputing re-runs tokens; distinct prompts, so every prefix hit is the victim finding
    # its own published blocks again.
    assert scheduler.computed_tokens > 2 * (16 + 12 - 1)
    assert stats["prefix_hit_tokens"] > 0
    assert_matches_reference(scheduler)


def test_recompute_without_prefix_caching_runs_everything_again():
    scheduler = serve(two_long_requests(np.random.default_rng(0)), num_blocks=12,
                      prefix_caching=False)
    assert scheduler.preemptions_by_recompute >= 1
    assert scheduler.cache.stats()["prefix_hit_tokens"] == 0
    assert_matches_reference(scheduler)


def test_parallel_sampling_forks_and_copies_the_shared_tail_on_write():
    rng = np.random.default_rng(1)
    # 10-token prompt: blocks 0-1 full, block 2 holds 2 tokens and is shared by 3 samples.
    scheduler = serve([request(0, rng.integers(0, MODEL.vocab_size, 10), 6, n=3)], num_blocks=32)
    samples = sorted(scheduler.finished, key=lambda s: s.sample_index)
    assert [s.sample_index for s in samples] == [0, 1, 2]
    assert scheduler.cache.stats()["cow_copies"] == 2  # all but the last appender copy
    first = [int(s.generated[0]) for s in samples]
    expected = np.argsort(-samples[0].logits[0], kind="stable")[:3].tolist()
    assert first == expected  # sample i starts with the i-th most likely token
    # The prompt ran once: 10 prompt tokens, then one row per later token per sample.
    assert scheduler.computed_tokens == 10 + 3 * 5
    assert_matches_reference(scheduler)


def test_prefix_hits_skip_the_shared_system_prompt():
    rng = np.random.default_rng(2)
    system = rng.integers(0, MODEL.vocab_size, 12)
    first = request(0, np.concatenate([system, [1, 2, 3]]), 4)
    second = request(1, np.concatenate([system, [4, 5]]), 4)
    model = Decoder(MODEL, seed=1)
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads, head_dim=MODEL.head_dim,
        block_size=BS, num_blocks=32, enable_prefix_caching=True))
    workload = FixedWorkload([first])
    scheduler = Scheduler(model, cache, workload, SchedulerConfig(record_logits=True))
    scheduler.step()  # prefill of the first request publishes its 3 full blocks
    workload.add(second)
    scheduler.step()
    late = next(s for s in scheduler.running if s.request is second)
    assert cache.stats()["prefix_hit_tokens"] == 12
    assert late.num_computed == 14  # hit 12, then one chunk of 2 in the same step
    scheduler.run()
    assert_matches_reference(scheduler)


def test_chunked_prefill_under_a_small_token_budget():
    rng = np.random.default_rng(3)
    scheduler = serve([request(0, rng.integers(0, MODEL.vocab_size, 30), 3),
                       request(1, rng.integers(0, MODEL.vocab_size, 7), 3)],
                      num_blocks=32, token_budget=8)
    assert all(r.prefill_tokens + r.decode_tokens <= 8 for r in scheduler.history)
    assert sum(r.prefill_tokens for r in scheduler.history) == 37
    assert_matches_reference(scheduler)


def test_a_cache_too_small_for_the_longest_request_is_refused():
    with pytest.raises(ValueError, match="too small"):
        serve([request(0, np.arange(40), 10)], num_blocks=8)


def test_verify_reports_a_changed_logit_and_a_changed_token():
    scheduler = serve(two_long_requests(np.random.default_rng(4)), num_blocks=12)
    seq = scheduler.finished[0]
    seq.logits[3] = seq.logits[3] * (1 + 1e-3)
    report = verify(scheduler.model, scheduler.finished, "float32")
    assert [(m.request_id, m.position) for m in report.mismatches] == [
        (seq.request.request_id, len(seq.request.prompt) + 3)]
    seq.logits[3] = seq.logits[3] / (1 + 1e-3)
    # The last token: a different one would change no later step.
    seq.tokens[-1] = int(np.argmin(seq.logits[-1]))
    report = verify(scheduler.model, scheduler.finished, "float32")
    assert len(report.mismatches) == 1
    assert report.mismatches[0].served_token == seq.tokens[-1]
    assert report.mismatches[0].relative_error < 1e-5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_end_to_end_demo_matches_the_reference(dtype):
    options = DemoOptions(preset="tiny", sessions=10, num_blocks=40, num_host_blocks=8,
                          dtype=dtype, seed=3)
    result = run_demo(options, verify_run=True, progress=False)
    s, v = result.summary, result.verification
    assert v.ok and v.samples == s["samples"] and v.steps == s["generated_tokens"]
    assert s["preemptions"] > 0 and s["prefix_hit_rate"] > 0 and s["cow_copies"] > 0
    assert s["peak_blocks_used"] <= 40


def test_resent_requests_are_whole_prompt_hits_that_match_the_reference():
    options = DemoOptions(preset="tiny", sessions=24, num_blocks=400, num_host_blocks=8,
                          resend_fraction=0.5, prompt_logits=64, seed=3)
    result = run_demo(options, verify_run=True, progress=False)
    without = run_demo(DemoOptions(**{**options.__dict__, "prompt_logits": 0}), progress=False)
    s, v = result.summary, result.verification
    assert s["whole_prompt_hits"] > 0 and without.summary["whole_prompt_hits"] == 0
    assert v.ok and v.samples == s["samples"] and v.steps == s["generated_tokens"]
    assert s["generated_tokens"] == without.summary["generated_tokens"]
    assert s["computed_tokens"] < without.summary["computed_tokens"]  # their prefill was skipped


def shared_prefix_requests(rng, count, system_len=12):
    """``count`` requests arriving together: a ``system_len``-token system prompt plus 1-4 own
    tokens each."""
    system = rng.integers(0, MODEL.vocab_size, system_len)
    return [request(i, np.concatenate([system, rng.integers(0, MODEL.vocab_size, 1 + i % 4)]), 3)
            for i in range(count)]


def test_requests_arriving_together_prefill_a_shared_prefix_once():
    requests = shared_prefix_requests(np.random.default_rng(4), 6)
    scheduler = serve(requests, num_blocks=64, token_budget=128, share_prefix_in_step=False)
    stats = scheduler.cache.stats()
    # The first request computes the 3 shared blocks; the 5 others wait one step and hit them.
    assert stats["prefix_hit_tokens"] == 5 * 12 and scheduler.shared_in_step_tokens == 0
    own = sum(len(r.prompt) - 12 for r in requests[1:])
    assert scheduler.computed_tokens == len(requests[0].prompt) + own + 6 * 2
    first_step = scheduler.history[0]
    assert first_step.prefill_tokens == len(requests[0].prompt) and first_step.waiting == 5
    assert_matches_reference(scheduler)


def test_requests_arriving_together_share_a_prefix_computed_in_the_same_step():
    requests = shared_prefix_requests(np.random.default_rng(4), 6)
    scheduler = serve(requests, num_blocks=64, token_budget=128)
    # The first request computes the 3 shared blocks; the 5 others fork them in the same step
    # and compute only their own tokens, reading the blocks the first one writes.
    assert scheduler.shared_in_step_tokens == 5 * 12
    assert scheduler.cache.stats()["prefix_hit_tokens"] == 0
    own = sum(len(r.prompt) - 12 for r in requests[1:])
    assert scheduler.computed_tokens == len(requests[0].prompt) + own + 6 * 2
    first_step = scheduler.history[0]
    assert first_step.prefill_tokens == len(requests[0].prompt) + own and first_step.waiting == 0
    assert all(s.first_token_step == 0 for s in scheduler.finished)
    assert_matches_reference(scheduler)


def test_a_request_waits_when_the_shared_blocks_are_not_all_computed_in_this_step():
    # Budget 8: the first request's chunk computes 2 of the 3 shared blocks in step 0; the others
    # wait (sharing only part of what they could reuse), then share or hit the rest.
    requests = shared_prefix_requests(np.random.default_rng(4), 3)
    scheduler = serve(requests, num_blocks=64, token_budget=8)
    assert scheduler.history[0].prefill_tokens == 8 and scheduler.history[0].waiting == 2
    stats = scheduler.cache.stats()
    assert scheduler.shared_in_step_tokens + stats["prefix_hit_tokens"] == 2 * 12
    own = sum(len(r.prompt) - 12 for r in requests[1:])
    assert scheduler.computed_tokens == len(requests[0].prompt) + own + 3 * 2
    assert_matches_reference(scheduler)


def test_without_waiting_requests_admitted_together_all_compute_the_shared_prefix():
    requests = shared_prefix_requests(np.random.default_rng(4), 6)
    scheduler = serve(requests, num_blocks=64, token_budget=128, wait_for_shared_prefix=False)
    assert scheduler.cache.stats()["prefix_hit_tokens"] == 0
    assert scheduler.computed_tokens == sum(len(r.prompt) for r in requests) + 6 * 2
    assert_matches_reference(scheduler)


def test_a_request_sharing_nothing_is_admitted_past_one_that_waits_for_a_prefix():
    rng = np.random.default_rng(5)
    sharing = shared_prefix_requests(rng, 2)
    other = request(2, rng.integers(0, MODEL.vocab_size, 9), 3)
    scheduler = serve([*sharing, other], num_blocks=64, token_budget=128,
                      share_prefix_in_step=False)
    first_step = scheduler.history[0]
    assert first_step.prefill_tokens == len(sharing[0].prompt) + 9 and first_step.waiting == 1
    assert scheduler.cache.stats()["prefix_hit_tokens"] == 12
    assert_matches_reference(scheduler)


def test_a_waiting_request_keeps_its_place_in_the_queue():
    rng = np.random.default_rng(6)
    sharing = shared_prefix_requests(rng, 2)
    others = [request(i, rng.integers(0, MODEL.vocab_size, 5), 3) for i in (2, 3)]
    model = Decoder(MODEL, seed=1)
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads, head_dim=MODEL.head_dim,
        block_size=BS, num_blocks=64, enable_prefix_caching=True))
    workload = FixedWorkload([*sharing, *others])
    scheduler = Scheduler(model, cache, workload, SchedulerConfig(token_budget=128, max_num_seqs=2,
                                                                  share_prefix_in_step=False))
    scheduler.step()  # 0 runs, 1 waits for its blocks, 2 is admitted past it, 3 hits the limit
    assert sorted(s.request.request_id for s in scheduler.running) == [0, 2]
    assert [s.request.request_id for s in scheduler.waiting] == [1, 3]
    scheduler.run()
    assert cache.stats()["prefix_hit_tokens"] == 12


class FailingOnce(Decoder):
    """The demo's decoder, whose first forward pass raises."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed = False

    def forward(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise RuntimeError("the forward pass failed")
        return super().forward(*args, **kwargs)


def test_a_failed_forward_pass_sends_the_step_forks_back_to_waiting():
    requests = shared_prefix_requests(np.random.default_rng(4), 6)
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads, head_dim=MODEL.head_dim,
        block_size=BS, num_blocks=64, enable_prefix_caching=True))
    workload = FixedWorkload(requests)
    scheduler = Scheduler(FailingOnce(MODEL, seed=1), cache, workload,
                          SchedulerConfig(token_budget=128, record_logits=True))
    with pytest.raises(RuntimeError, match="forward pass failed"):
        scheduler.step()
    cache.check_invariants()
    assert [s.request.request_id for s in scheduler.waiting] == [1, 2, 3, 4, 5]
    assert len(cache) == 1 and scheduler.shared_in_step_tokens == 0
    for seq in scheduler.running:  # the scheduler's counts are the cache's
        assert cache.num_computed(seq.seq_id) == seq.num_computed == 0
    scheduler.run()  # the same step again, now passing
    assert scheduler.shared_in_step_tokens == 5 * 12 and len(workload.finished_requests) == 6
    cache.check_invariants()
    assert_matches_reference(scheduler)


def test_a_fork_that_runs_out_of_blocks_is_undone_and_waits():
    # Blocks of 4: request 0 holds 4 of the 8 blocks; request 1 shares its 3 prefix blocks but
    # needs 5 more for its own 17 tokens: the fork is freed and it waits, then hits the prefix.
    rng = np.random.default_rng(8)
    system = rng.integers(0, MODEL.vocab_size, 12)
    requests = [request(0, np.r_[system, rng.integers(0, MODEL.vocab_size, 4)], 3),
                request(1, np.r_[system, rng.integers(0, MODEL.vocab_size, 17)], 3)]
    model = Decoder(MODEL, seed=1)
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=MODEL.num_layers, num_kv_heads=MODEL.num_kv_heads, head_dim=MODEL.head_dim,
        block_size=BS, num_blocks=8, enable_prefix_caching=True))
    workload = FixedWorkload(requests)
    scheduler = Scheduler(model, cache, workload, SchedulerConfig(token_budget=128,
                                                                  record_logits=True))
    scheduler.step()
    cache.check_invariants()
    assert [s.request.request_id for s in scheduler.waiting] == [1] and len(cache) == 1
    assert cache.stats()["allocation_failures"] >= 1 and scheduler.shared_in_step_tokens == 0
    scheduler.run()
    assert cache.stats()["prefix_hit_tokens"] == 12 and len(cache) == 0
    assert_matches_reference(scheduler)


def test_same_step_forks_of_forks_and_parallel_samples():
    # Request 2 has request 1's prompt: it forks request 1's 16 leading tokens (request 0's 12
    # plus request 1's own next block), all computed in the same step; requests 1 and 3 ask for
    # 2 samples each.
    rng = np.random.default_rng(9)
    system = rng.integers(0, MODEL.vocab_size, 12)
    own = rng.integers(0, MODEL.vocab_size, 8)
    requests = [request(0, np.r_[system, rng.integers(0, MODEL.vocab_size, 3)], 4),
                request(1, np.r_[system, own], 4, n=2),
                request(2, np.r_[system, own], 4),
                request(3, np.r_[system, rng.integers(0, MODEL.vocab_size, 5)], 4, n=2)]
    scheduler = serve(requests, num_blocks=64, token_budget=128)
    assert scheduler.shared_in_step_tokens == 12 + 16 + 12
    assert scheduler.history[0].waiting == 0
    assert scheduler.computed_tokens == 15 + 8 + 4 + 5 + 6 * 3  # 6 samples, 3 decode rows each
    assert_matches_reference(scheduler)


def test_step_attention_reads_a_shared_prefix_only_when_the_step_writes_it():
    heads, d = 2, 8
    cache = fkv.PagedKvCache(fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=d,
                                             block_size=BS, num_blocks=16,
                                             enable_prefix_caching=True))
    cache.add_sequence(1, np.arange(8))
    cache.fork(1, 2, num_tokens=4)
    cache.append_tokens(2, [50, 51, 52])
    rng = np.random.default_rng(3)

    def run(chunks):
        ids, starts, ends = zip(*chunks)
        attention = PagedStepAttention(cache, [], ids, starts, ends)
        rows = sum(end - start for _, start, end in chunks)
        q = rng.standard_normal((rows, heads, d)).astype(np.float32)
        k, v = (rng.standard_normal((rows, 1, d)).astype(np.float32) for _ in range(2))
        return q, k, v, attention(0, q, k, v)

    # Sequence 2's chunk starts after positions 0-3, which sequence 1's rows write in the step.
    q, k, v, out = run([(1, 0, 8), (2, 4, 7)])
    keys = np.r_[k[:4], k[8:]][:, 0].astype(np.float64)  # sequence 2: 1's rows 0-3, its own
    values = np.r_[v[:4], v[8:]][:, 0].astype(np.float64)
    for row, pos in enumerate(range(4, 7)):
        logits = q[8 + row].astype(np.float64) @ keys[:pos + 1].T / np.sqrt(d)  # [heads, keys]
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected = (weights / weights.sum(axis=1, keepdims=True)) @ values[:pos + 1]
        np.testing.assert_allclose(out[8 + row], expected, rtol=1e-5, atol=1e-6)
    for chunks in ([(1, 0, 2), (2, 4, 7)], [(1, 0, 3), (2, 4, 7)], [(2, 4, 7)]):
        with pytest.raises(fkv.InvalidStateError, match="sequence 2"):
            run(chunks)
    cache.mark_computed_batch([1, 2], [8, 4])  # (a child's count is its own)
    assert np.isfinite(run([(2, 4, 7)])[3]).all()
    cache.check_invariants()
