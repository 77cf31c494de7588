"""transformers on CPU: plain generate, transformers' generate_batch, generate with FerrumCache and
ferrum_kv's Engine, side by side in one process (issue 15's performance section).

Model: a random Llama (hidden 512, 8 layers, 8 query / 2 KV heads of 64, vocab 8192), float32
weights, greedy, ``--threads`` threads of torch and BLAS (for the kernels see
``--kernel-threads``). Workloads:

- ``short``: 8 prompts x 128 tokens, 64 new tokens each;
- ``long``: 4 prompts x 2048 tokens, 64 new tokens each;
- ``shared``: 32 requests of uneven lengths (a 1024-token system prompt plus 16..256 tokens),
  16 new tokens each: time to first token (TTFT) of the engine with and without prefix
  caching (all requests arrive at once), with prefix caching but without waiting for a shared
  prefix (``wait_for_shared_prefix=False``) or waiting for it without sharing it in the step
  that computes it (``share_prefix_in_step=False``), and of the first 8 requests one by one through
  generate with DynamicCache and with FerrumCache over one PagedKvCache (prefix hits). The
  engines admit in ``--admission-order`` (all three the same, so the ratios are fair); unless
  that is "fcfs", the engine with and without prefix caching also runs in arrival order
  ("fcfs" modes), for its ratios side by side.

After one warm-up call of every mode, every mode runs ``--repeat`` times, interleaved, and the
best wall time, CPU time (all threads of the process), TTFT and decode step are kept (the
machine is shared and noisy: CPU time is the steadier measure of work when other processes
take the cores). Reported per workload and mode: wall and CPU time, generated tokens/s, TTFT
(mean, median and 90th percentile over the requests; for the engine also ``ttft_cpu``, the mean
process CPU time from the start of the call to each first token), and for generate the median
decode-step time (a logits processor timestamps every step). Ratios are printed against plain
generate (and the engine against generate_batch), with plain generate's wall time over its
prefill: the most an engine whose prefill costs as much can gain; and the engine's time in
forward passes with prefill rows and in decode-only ones (hooks on the model's base module), with
generate's wall time over the former: the most this engine could gain with free decode steps.
The engine runs with a
2048-token budget per step (chunks of at most 2048 prompt tokens; ``--engine-budget``). The
thread settings and the load average are printed. ``--quick`` shrinks everything (a smoke run;
its figures are not the issue's).

    python bench/bench_transformers.py [--quick] [--threads 2] [--kernel-threads N] [--repeat 3]
        [--workloads short,long,shared] [--engine-budget 2048]
        [--admission-order shortest_prefill] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from typing import Callable

import torch
import transformers
from threadpoolctl import threadpool_limits
from transformers import (ContinuousBatchingConfig, GenerationConfig, LogitsProcessor,
                          LogitsProcessorList)

import ferrum_kv as fkv
from ferrum_kv.demo.scheduler import ADMISSION_ORDERS
from ferrum_kv.integrations.transformers import Engine, FerrumCache
from ferrum_kv.integrations.transformers._model import kernel_threads

BLOCK = 16


def build_model(quick: bool) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=8192, hidden_size=256 if quick else 512, intermediate_size=688 if quick else 1376,
        num_hidden_layers=4 if quick else 8, num_attention_heads=8, num_key_value_heads=2,
        max_position_embeddings=4096, pad_token_id=0, eos_token_id=None, bos_token_id=1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def workloads(quick: bool) -> dict:
    g = torch.Generator().manual_seed(1)

    def tokens(n: int) -> list[int]:
        return torch.randint(2, 8192, (n,), generator=g).tolist()

    scale = 4 if quick else 1
    system = tokens(1024 // scale)
    lengths = torch.randint(16, 257, (32 // scale,), generator=g).tolist()
    return {
        "short": ([tokens(128 // scale) for _ in range(8)], 64 // scale),
        "long": ([tokens(2048 // scale) for _ in range(4 if not quick else 2)], 64 // scale),
        "shared": ([system + tokens(n // scale) for n in lengths], 16 // scale),
    }


class StepTimer(LogitsProcessor):
    """Timestamps every generation step (called once per step, after its forward pass)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def run_generate(model, prompts, new, cache_factory: Callable[[], object] | None) -> dict:
    """One batched generate (left-padded); cache_factory None: DynamicCache + SDPA."""
    model.set_attn_implementation("sdpa" if cache_factory is None else "ferrum")
    ids, mask = left_padded(prompts)
    timer = StepTimer()
    extra = {} if cache_factory is None else {"cache": cache_factory()}
    cpu, start = time.process_time(), time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, logits_processor=LogitsProcessorList([timer]),
                             **extra)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    steps = [b - a for a, b in zip(timer.times, timer.times[1:])]
    return {"seconds": elapsed, "cpu_s": cpu, "tokens": out[:, ids.shape[1]:].tolist(),
            "ttft_s": timer.times[0] - start,
            "decode_step_s": statistics.median(steps) if steps else float("nan")}


def run_generate_batch(model, prompts, new) -> dict:
    """transformers' continuous batching, sized explicitly (blocks of 256 tokens for everything,
    the whole batch per step)."""
    model.set_attn_implementation("sdpa")
    total = sum(len(p) + new for p in prompts)
    config = ContinuousBatchingConfig(page_size=256, num_blocks=total // 256 + 2 * len(prompts),
                                      max_batch_tokens=max(512, max(map(len, prompts))),
                                      max_requests_per_batch=len(prompts))
    generation = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
    cpu, start = time.process_time(), time.perf_counter()
    with torch.no_grad():
        outputs = model.generate_batch(prompts, generation_config=generation,
                                       continuous_batching_config=config, progress_bar=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    ordered = [outputs[k] for k in sorted(outputs, key=lambda k: int(k.split("_")[-1]))]
    return {"seconds": elapsed, "cpu_s": cpu, "tokens": [o.generated_tokens for o in ordered]}


def run_engine(model, prompts, new, budget: int, order: str, prefix_caching: bool = True,
               wait_for_shared_prefix: bool = True, share_prefix_in_step: bool = True) -> dict:
    """The engine (a step budget of ``budget`` tokens, admission order ``order``);
    wait_for_shared_prefix False: requests that arrive together do not wait for one another's
    shared prefix; share_prefix_in_step False: they wait for it to be computed (no fork of a
    prefix that a chunk of the same step computes)."""
    blocks = sum(-(-(len(p) + new) // BLOCK) for p in prompts) + 8
    engine = Engine(model, num_blocks=blocks, enable_prefix_caching=prefix_caching,
                    token_budget=budget, max_num_seqs=len(prompts), admission_order=order)
    engine.scheduler_config = dataclasses.replace(
        engine.scheduler_config, wait_for_shared_prefix=wait_for_shared_prefix,
        share_prefix_in_step=share_prefix_in_step)
    first: dict[int, float] = {}
    first_cpu: dict[int, float] = {}
    replies: list[list[int]] = [[] for _ in prompts]
    forwards: list[float] = []  # wall time of each forward pass of the model (one per step)
    base = model.base_model
    hooks = (base.register_forward_pre_hook(lambda *_: forwards.append(-time.perf_counter())),
             base.register_forward_hook(lambda *_: forwards.__setitem__(
                 -1, forwards[-1] + time.perf_counter())))
    try:
        cpu, start = time.process_time(), time.perf_counter()
        for index, token in engine.stream(prompts, max_new_tokens=new):
            if index not in first:
                first[index] = time.perf_counter() - start
                first_cpu[index] = time.process_time() - cpu
            replies[index].append(token)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for hook in hooks:
            hook.remove()
    # The steps that ran the model, in order: those with prefill rows, and decode-only ones.
    ran = [r for r in engine.last_scheduler.history if r.decode_tokens + r.prefill_tokens]
    prefill = [t for r, t in zip(ran, forwards) if r.prefill_tokens]
    decode = [t for r, t in zip(ran, forwards) if not r.prefill_tokens]
    return {"seconds": elapsed, "cpu_s": cpu, "tokens": replies, **ttft_stats(list(first.values())),
            "ttft_cpu_s": statistics.mean(first_cpu.values()),
            "prefix_hit_tokens": engine.cache.stats()["prefix_hit_tokens"],
            "shared_in_step_tokens": engine.last_scheduler.shared_in_step_tokens,
            "prefill_forward_s": sum(prefill), "decode_forward_s": sum(decode),
            "decode_forwards": len(decode)}


def ttft_stats(ttfts: list[float]) -> dict:
    """Mean, median and 90th percentile of the requests' times to first token."""
    deciles = statistics.quantiles(ttfts, n=10, method="inclusive")
    return {"ttft_s": statistics.mean(ttfts), "ttft_p50_s": statistics.median(ttfts),
            "ttft_p90_s": deciles[8]}


def run_generate_each(model, prompts, new, cache_factory) -> dict:
    """The requests one by one (a server without batching): TTFT of each, mean."""
    runs = [run_generate(model, [prompt], new, cache_factory) for prompt in prompts]
    return {"seconds": sum(r["seconds"] for r in runs), "cpu_s": sum(r["cpu_s"] for r in runs),
            "tokens": [r["tokens"][0] for r in runs],
            **ttft_stats([r["ttft_s"] for r in runs])}


def load() -> str:
    """The 1, 5 and 15-minute load averages (the machine is shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def best(runs: list[dict]) -> dict:
    """Best of repeated runs on a noisy machine: the shortest wall time, TTFT and decode step
    (each its own minimum) and the tokens of the first run."""
    result = dict(runs[0])
    for key in ("seconds", "cpu_s", "ttft_s", "ttft_p50_s", "ttft_p90_s", "ttft_cpu_s",
                "decode_step_s"):
        if key in result:
            result[key] = min(run[key] for run in runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and workloads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every mode, interleaved; the best is reported")
    parser.add_argument("--kernel-threads", type=int,
                        help="fkv.set_num_threads: the CPUs ferrum_kv's kernels count on (default:"
                        " the process's CPUs); inside a forward pass they use those torch's other"
                        " threads leave free (kernel_threads in the integration)")
    parser.add_argument("--workloads", default="short,long,shared",
                        help="comma-separated subset of short, long, shared")
    parser.add_argument("--engine-budget", type=int, default=2048,
                        help="the engine's token budget per step (longer prompts are prefilled in "
                        "chunks of at most this many tokens)")
    parser.add_argument("--admission-order", choices=ADMISSION_ORDERS, default="shortest_prefill",
                        help="the engine's admission order (SchedulerConfig.admission_order)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    budget, order = args.engine_budget, args.admission_order
    torch.set_num_threads(args.threads)
    if args.kernel_threads:
        fkv.set_num_threads(args.kernel_threads)
    model = build_model(args.quick)
    results: dict[str, dict] = {}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}: torch threads "
          f"{torch.get_num_threads()}, kernel threads inside a forward pass {kernel_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"engine budget {budget}, admission order {order}, "
          f"load average {load()}", flush=True)

    def blocks(prompts, new) -> int:
        return sum(-(-(len(p) + new) // BLOCK) for p in prompts) + 8

    def modes_of(name: str, prompts: list[list[int]], new: int) -> dict[str, Callable[[], dict]]:
        if name == "shared":
            first = prompts[:8]  # one by one: the first 8 requests only (a server without batching)

            def one_by_one_ferrum() -> dict:  # a fresh PagedKvCache per run: no hits from the last
                kv = fkv.PagedKvCache(FerrumCache.config_for(model, num_blocks=blocks(first, new)))
                return run_generate_each(model, first, new, lambda: FerrumCache(model, kv_cache=kv))

            engines = {
                "engine, no prefix caching": lambda: run_engine(model, prompts, new, budget, order,
                                                                False),
                "engine, no waiting": lambda: run_engine(model, prompts, new, budget, order, True,
                                                         False),
                "engine, no sharing in step": lambda: run_engine(
                    model, prompts, new, budget, order, share_prefix_in_step=False),
                "engine": lambda: run_engine(model, prompts, new, budget, order),
            }
            if order != "fcfs":
                engines.update({
                    "engine, no prefix caching, fcfs": lambda: run_engine(
                        model, prompts, new, budget, "fcfs", False),
                    "engine, fcfs": lambda: run_engine(model, prompts, new, budget, "fcfs"),
                })
            return {
                **engines,
                "8 one by one (Dynamic)": lambda: run_generate_each(model, first, new, None),
                "8 one by one (Ferrum)": one_by_one_ferrum,
            }
        return {
            "generate (Dynamic+SDPA)": lambda: run_generate(model, prompts, new, None),
            "generate_batch": lambda: run_generate_batch(model, prompts, new),
            "generate (FerrumCache)": lambda: run_generate(
                model, prompts, new, lambda: FerrumCache(model, num_blocks=blocks(prompts, new))),
            "engine": lambda: run_engine(model, prompts, new, budget, order),
        }

    with threadpool_limits(limits=args.threads):
        warm = [[5 + i] * 40 for i in range(2)]  # first calls pay for torch's and the modes' setup
        run_generate(model, warm, 3, None)
        run_generate(model, warm, 3, lambda: FerrumCache(model, num_blocks=16))
        run_generate_batch(model, warm, 3)
        run_engine(model, warm, 3, budget, order)
        chosen = args.workloads.split(",")
        for name, (prompts, new) in workloads(args.quick).items():
            if name not in chosen:
                continue
            modes = modes_of(name, prompts, new)
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            for _ in range(args.repeat):
                for mode, run in modes.items():
                    runs[mode].append(run())
            print(f"{name}: load average {load()} after its runs", flush=True)
            for mode in modes:
                result = best(runs[mode])
                count = 8 if mode.startswith("8 ") else len(prompts)
                result["generated_per_s"] = count * new / result["seconds"]
                result["generated_per_cpu_s"] = count * new / result["cpu_s"]
                results.setdefault(name, {})[mode] = result
                extra = "".join(f"  {k[:-2]} {result[k] * 1e3:8.1f} ms"
                                for k in ("ttft_s", "ttft_p50_s", "ttft_p90_s", "ttft_cpu_s",
                                          "decode_step_s")
                                if k in result)
                if "prefix_hit_tokens" in result:
                    extra += (f"  prefix hits {result['prefix_hit_tokens']} tokens, shared in "
                              f"step {result['shared_in_step_tokens']}")
                print(f"{name:7s} {mode:31s} {result['seconds']:7.2f} s "
                      f"{result['cpu_s']:7.2f} cpu-s"
                      f"  {result['generated_per_s']:8.1f} gen tok/s{extra}", flush=True)

    print("\nratios (higher is better for ferrum_kv):")
    for name, modes in results.items():
        if name == "shared":
            off, on = modes["engine, no prefix caching"], modes["engine"]
            no_wait = modes["engine, no waiting"]
            no_share = modes["engine, no sharing in step"]
            dyn, fer = modes["8 one by one (Dynamic)"], modes["8 one by one (Ferrum)"]
            for key in ("ttft_s", "ttft_p50_s", "ttft_p90_s", "ttft_cpu_s"):
                print(f"  shared: {key[:-2]}, engine without / with prefix caching ({order}) = "
                      f"{off[key] / on[key]:.2f}x (without sharing in step "
                      f"{off[key] / no_share[key]:.2f}x, without waiting for a shared prefix "
                      f"{off[key] / no_wait[key]:.2f}x)")
                if "engine, fcfs" in modes:
                    fcfs_off = modes["engine, no prefix caching, fcfs"]
                    fcfs_on = modes["engine, fcfs"]
                    print(f"  shared: {key[:-2]}, engine without / with prefix caching (fcfs) = "
                          f"{fcfs_off[key] / fcfs_on[key]:.2f}x; with prefix caching, fcfs / "
                          f"{order} = {fcfs_on[key] / on[key]:.2f}x, without it "
                          f"{fcfs_off[key] / off[key]:.2f}x")
            print(f"  shared: mean TTFT one by one, DynamicCache / FerrumCache (prefix hits) = "
                  f"{dyn['ttft_s'] / fer['ttft_s']:.2f}x")
            continue
        base, batch = modes["generate (Dynamic+SDPA)"], modes["generate_batch"]
        engine, ferrum = modes["engine"], modes["generate (FerrumCache)"]
        same = sum(a == b for a, b in zip(engine["tokens"], base["tokens"]))
        print(f"  {name}: generated tokens/s (per CPU second), engine / generate = "
              f"{engine['generated_per_s'] / base['generated_per_s']:.2f}x "
              f"({engine['generated_per_cpu_s'] / base['generated_per_cpu_s']:.2f}x), engine / "
              f"generate_batch = {engine['generated_per_s'] / batch['generated_per_s']:.2f}x "
              f"({engine['generated_per_cpu_s'] / batch['generated_per_cpu_s']:.2f}x), "
              f"FerrumCache / DynamicCache = "
              f"{ferrum['generated_per_s'] / base['generated_per_s']:.2f}x "
              f"({ferrum['generated_per_cpu_s'] / base['generated_per_cpu_s']:.2f}x); decode step, "
              f"DynamicCache / FerrumCache = {base['decode_step_s'] / ferrum['decode_step_s']:.2f}x;"
              f" engine replies equal to generate's: {same}/{len(base['tokens'])}")
        print(f"  {name}: generate's wall time / its prefill (TTFT) = "
              f"{base['seconds'] / base['ttft_s']:.2f}x: the most any engine whose prefill costs "
              f"what generate's does can reach, with free decode steps")
        print(f"  {name}: the engine's {engine['seconds']:.2f} s = forward passes with prefill "
              f"rows {engine['prefill_forward_s']:.2f} s + {engine['decode_forwards']} decode-only "
              f"ones {engine['decode_forward_s']:.2f} s + the rest; generate's wall time / those "
              f"prefill passes = {base['seconds'] / engine['prefill_forward_s']:.2f}x: the most "
              f"this engine could reach with free decode steps")
    if args.json:
        for modes in results.values():
            for result in modes.values():
                result.pop("tokens")
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
