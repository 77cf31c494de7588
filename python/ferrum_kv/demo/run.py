"""One demo run: build the model, the cache and the workload, serve it, optionally verify."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from threadpoolctl import threadpool_limits
from tqdm import tqdm

import ferrum_kv as fkv
from ferrum_kv.demo.model import Decoder
from ferrum_kv.demo.presets import HF_MODEL_PRESETS, MODEL_PRESETS
from ferrum_kv.demo.reference import VerifyReport, default_tolerance, verify
from ferrum_kv.demo.scheduler import Scheduler, SchedulerConfig, Sequence, StepRecord
from ferrum_kv.demo.workload import Workload, WorkloadConfig


@dataclass(frozen=True)
class DemoOptions:
    """Everything a demo run depends on (the CLI's options).

    Attributes
    ----------
    preset : str
        A key of ``MODEL_PRESETS`` (the NumPy decoder), or one of ``HF_MODEL_PRESETS``: a small
        random transformers model of that architecture (needs the ``hf`` extra; ``--verify``
        then compares with transformers' own ``generate``).
    sessions : int
        Workload size: conversations plus one-shot requests.
    num_blocks, num_host_blocks, block_size : int
        Device cache, host tier (0: preemption always recomputes) and block geometry.
    dtype : str
        K/V storage dtype.
    eviction_policy : str
        Prefix-cache eviction order.
    prefix_caching : bool
    token_budget, max_num_seqs : int
        Scheduler limits (``SchedulerConfig``).
    admission_order : str
        "fcfs" or "shortest_prefill" (``SchedulerConfig.admission_order``).
    max_wait_steps : int
        Aging bound of "shortest_prefill" (``SchedulerConfig.max_wait_steps``).
    seed : int
        Weights and workload.
    resend_fraction : float
        Share of one-shot requests sent again after their reply (``WorkloadConfig``).
    prompt_logits : int
        Whole-prompt hits: how many prompts' last-token logits the cache keeps
        (``CacheConfig.max_prompt_logits``); 0 turns them off. Needs prefix caching.
    threads : int
        Threads for NumPy's BLAS and the attention kernels. The demo's batches are small, so
        extra threads mostly add synchronisation.
    tiers : tuple of str
        Storage tiers for the prefix cache (``ferrum_kv.tiers.spec.parse_tier``: ``disk:PATH``,
        ``redis://...``), fastest first; needs prefix caching. Their model id names the preset
        and the seed (the weights).
    precision : str
        The attention kernels' precision, "exact" or "fast" (``paged_attention_decode``).
    """

    preset: str = "base"
    sessions: int = 48
    num_blocks: int = 96
    num_host_blocks: int = 24
    block_size: int = 16
    dtype: str = "float32"
    eviction_policy: str = "lru"
    prefix_caching: bool = True
    token_budget: int = 256
    max_num_seqs: int = 24
    seed: int = 0
    resend_fraction: float = 0.0
    prompt_logits: int = 0
    threads: int = 1
    tiers: tuple = ()
    precision: str = "exact"
    admission_order: str = SchedulerConfig.admission_order
    max_wait_steps: int = SchedulerConfig.max_wait_steps

    def __post_init__(self) -> None:
        if self.tiers and not self.prefix_caching:
            raise ValueError("tiers need prefix caching")
        if self.precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {self.precision!r}")
        if self.prompt_logits < 0:
            raise ValueError(f"prompt_logits must be at least 0, got {self.prompt_logits}")
        if self.preset not in MODEL_PRESETS and self.preset not in HF_MODEL_PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r} "
                             f"(choose from {', '.join([*MODEL_PRESETS, *HF_MODEL_PRESETS])})")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        self.scheduler_config()  # its checks

    def scheduler_config(self, record_logits: bool = False) -> SchedulerConfig:
        """The scheduler's configuration; raises ValueError for bad limits or order."""
        return SchedulerConfig(
            token_budget=self.token_budget, max_num_seqs=self.max_num_seqs,
            record_logits=record_logits, attention_precision=self.precision,
            admission_order=self.admission_order, max_wait_steps=self.max_wait_steps)


@contextmanager
def _threads(threads: int) -> Iterator[None]:
    """NumPy's BLAS and ferrum_kv's kernels on at most ``threads`` threads, until the block ends."""
    previous = fkv.get_num_threads()
    fkv.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        fkv.set_num_threads(previous)


@dataclass(frozen=True)
class DemoResult:
    """What a run produced.

    Attributes
    ----------
    summary : dict
        The figures of the summary table (``report.format_summary`` lays them out).
    history : list of StepRecord
        One per step, for the plot.
    verification : VerifyReport or None
        With ``verify=True``.
    samples : list of Sequence
        The finished samples in the order they finished: their tokens, and with ``verify=True``
        the logits each generated token was chosen from.
    """

    summary: dict
    history: list[StepRecord]
    verification: Optional[VerifyReport]
    samples: list[Sequence]


def run_demo(options: DemoOptions, verify_run: bool = False, progress: Optional[bool] = None,
             tolerance: Optional[float] = None) -> DemoResult:
    """Serve the synthetic workload over a PagedKvCache and summarise; optionally verify it.

    Parameters
    ----------
    options : DemoOptions
    verify_run : bool
        Also run every sample through the contiguous reference (``reference.verify``).
    progress : bool, optional
        Show tqdm progress bars on stderr; None (default): when stderr is a terminal.
    tolerance : float, optional
        Relative logit tolerance of the verification; default ``default_tolerance`` of the
        storage dtype and precision.

    Returns
    -------
    DemoResult

    Raises
    ------
    ValueError, ferrum_kv.Error
        For a configuration that cannot work (e.g. a cache too small for the longest request).
    """
    reference = None
    if options.preset in HF_MODEL_PRESETS:
        from ferrum_kv.demo import hf  # torch and transformers: only for an hf: model

        hf_model = hf.build_model(options.preset, options.seed)
        model, vocab_size = hf.step_model(hf_model), hf_model.config.vocab_size
        if verify_run:
            reference = hf.reference_logits(hf_model)
    else:
        model = Decoder(MODEL_PRESETS[options.preset], seed=options.seed)
        vocab_size = model.config.vocab_size
    geometry = model.config
    tier_options = {}
    if options.tiers:
        from ferrum_kv.tiers.spec import parse_tier

        tier_options = dict(tiers=[parse_tier(spec) for spec in options.tiers],
                            model_id=f"ferrum-kv-demo/{options.preset}/seed={options.seed}")
    cache = fkv.PagedKvCache(fkv.CacheConfig(
        num_layers=geometry.num_layers, num_kv_heads=geometry.num_kv_heads,
        head_dim=geometry.head_dim, block_size=options.block_size,
        num_blocks=options.num_blocks, dtype=options.dtype,
        num_host_blocks=options.num_host_blocks, enable_prefix_caching=options.prefix_caching,
        eviction_policy=options.eviction_policy,
        max_prompt_logits=options.prompt_logits if options.prefix_caching else 0),
        **tier_options)
    workload = Workload(WorkloadConfig(num_sessions=options.sessions,
                                       resend_fraction=options.resend_fraction),
                        vocab_size, seed=options.seed)
    scheduler = Scheduler(model, cache, workload, options.scheduler_config(verify_run))

    hide_progress = None if progress is None else not progress  # tqdm: None = auto
    with _threads(options.threads):
        start = time.perf_counter()
        with tqdm(total=workload.num_samples, desc="serving", unit="sample",
                  disable=hide_progress, leave=False) as bar:
            while not scheduler.done:
                record = scheduler.step()
                bar.update(len(scheduler.finished) - bar.n)
                bar.set_postfix(running=record.running, swapped=record.swapped,
                                blocks=f"{record.blocks_held}/{options.num_blocks}", refresh=False)
        elapsed = time.perf_counter() - start
        verification = None
        if verify_run:
            with tqdm(total=len(scheduler.finished), desc="verifying", unit="sample",
                      disable=hide_progress, leave=False) as bar:
                verify_start = time.perf_counter()
                if tolerance is None:
                    tolerance = default_tolerance(options.dtype, options.precision)
                verification = verify(model, scheduler.finished, options.dtype, tolerance,
                                      progress=bar.update, reference=reference)
                verify_elapsed = time.perf_counter() - verify_start

    cache.flush_tiers()  # what a restarted or second replica will find
    cache.close_tiers()
    summary = _summarise(options, scheduler, elapsed)
    if verification is not None:
        summary["verify_s"] = verify_elapsed
    return DemoResult(summary=summary, history=scheduler.history, verification=verification,
                      samples=scheduler.finished)


def _summarise(options: DemoOptions, scheduler: Scheduler, elapsed: float) -> dict:
    stats = scheduler.cache.stats()
    requests = {seq.request.request_id: seq.request for seq in scheduler.finished}
    prompt_tokens = sum(len(r.prompt) for r in requests.values())
    generated_tokens = sum(seq.num_generated for seq in scheduler.finished)
    ttft_steps = [seq.first_token_step - seq.request.arrival_step + 1
                  for seq in scheduler.finished if seq.sample_index == 0]
    return {
        "requests": len(requests),
        "samples": len(scheduler.finished),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "computed_tokens": scheduler.computed_tokens,
        "steps": len(scheduler.history),
        "elapsed_s": elapsed,
        "tokens_per_s": (prompt_tokens + generated_tokens) / elapsed,
        "generated_tokens_per_s": generated_tokens / elapsed,
        "admission_order": options.admission_order,
        "max_wait_steps": options.max_wait_steps,
        "mean_ttft_steps": sum(ttft_steps) / max(len(ttft_steps), 1),
        "prefix_hit_rate": stats["prefix_hit_tokens"] / max(stats["prefix_query_tokens"], 1),
        "prefix_hit_tokens": stats["prefix_hit_tokens"],
        "shared_in_step_tokens": scheduler.shared_in_step_tokens,
        "whole_prompt_hits": scheduler.whole_prompt_hits,
        "peak_blocks_used": max((r.blocks_held for r in scheduler.history), default=0),
        "num_blocks": options.num_blocks,
        "preemptions": scheduler.preemptions,
        "preemptions_by_swap": scheduler.preemptions_by_swap,
        "preemptions_by_recompute": scheduler.preemptions_by_recompute,
        "swap_outs": stats["swap_outs"],
        "swap_ins": stats["swap_ins"],
        "cow_copies": stats["cow_copies"],
        "evictions": stats["evictions"],
        "tier_loaded_tokens": stats["tier_blocks_imported"] * options.block_size,
        "tier_blocks_written": sum(t["blocks_written"] for t in stats.get("tiers", {}).values()),
        "tier_errors": sum(t["errors"] + t["bad_values"] for t in stats.get("tiers", {}).values()),
        "tiers": list(options.tiers),
        "model": options.preset,
        "dtype": options.dtype,
    }
