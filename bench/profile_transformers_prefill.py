"""Where the prefill of bench_transformers.py's ``long`` workload goes: the Engine against plain
generate (DynamicCache + SDPA), the prompts only (``max_new_tokens=1``).

1. Both prefill the 4 x 2048-token prompts once, one after the other (after a warm-up call):
   wall and CPU time (all threads); for the engine, the time inside the "ferrum" attention
   (``_PackedStep.attend``: the q/k/v conversions, ``write_kv`` and the kernels), inside the
   kernels alone (``paged_attention_prefill`` / ``_decode``), and computing logits.
2. ``torch.profiler`` on a prefill of the first 2 prompts by each: the torch operators by their
   own CPU time (our kernels are not torch operators: they show only in the engine's wall time).

Same model and thread options as bench_transformers.py.

    OMP_WAIT_POLICY=PASSIVE python bench/profile_transformers_prefill.py [--threads 1] [--rows 12]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

import ferrum_kv as fkv
from bench_transformers import build_model, load, run_engine, run_generate, workloads
from ferrum_kv.integrations.transformers import engine as engine_module

ENGINE_BUDGET = 2048


@contextlib.contextmanager
def timed(owner: object, name: str, totals: dict[str, float], label: str) -> Iterator[None]:
    """Replace ``owner.name`` by a wrapper that adds its calls' wall time to ``totals[label]``."""
    original: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=12, help="operators listed per profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(False)
    prompts, _ = workloads(False)["long"]
    warm = [[5 + i] * 40 for i in range(2)]
    run_generate(model, warm, 1, None)
    run_engine(model, warm, 1, ENGINE_BUDGET)
    print(f"torch threads {torch.get_num_threads()}, load average {load()}")

    totals: dict[str, float] = defaultdict(float)
    with contextlib.ExitStack() as stack:
        stack.enter_context(timed(engine_module._PackedStep, "attend", totals, "attention"))
        stack.enter_context(timed(fkv, "paged_attention_prefill", totals, "kernels"))
        stack.enter_context(timed(fkv, "paged_attention_decode", totals, "kernels"))
        stack.enter_context(timed(engine_module.TransformersStepModel, "logits", totals, "logits"))
        engine = run_engine(model, prompts, 1, ENGINE_BUDGET)
    generate = run_generate(model, prompts, 1, None)
    print(f"prefill of {len(prompts)} x {len(prompts[0])} tokens:")
    print(f"  engine    {engine['seconds']:6.2f} s wall {engine['cpu_s']:6.2f} s CPU;  inside: "
          f"attention {totals['attention']:.3f} s (kernels {totals['kernels']:.3f} s, "
          f"conversions and write_kv {totals['attention'] - totals['kernels']:.3f} s), "
          f"logits {totals['logits']:.3f} s")
    print(f"  generate  {generate['seconds']:6.2f} s wall {generate['cpu_s']:6.2f} s CPU")

    for name, call in (("generate", lambda: run_generate(model, prompts[:2], 1, None)),
                       ("engine", lambda: run_engine(model, prompts[:2], 1, ENGINE_BUDGET))):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            call()
            wall = time.perf_counter() - start
        print(f"\n{name}: prefill of 2 prompts, {wall:.2f} s wall; torch operators:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=44))
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
