"""How much quantized K/V changes what a model generates: the `ferrum-kv demo` workload served
with each storage dtype (and precision) against the same workload over float32 storage.

    python bench/bench_demo_kv_accuracy.py [--sessions 24] [--preset base] [--seed 0]
        [--dtypes bfloat16,int8,fp8_e4m3,fp8_e5m2,int4] [--precisions exact,fast]

Every run serves the same seeded workload (`ferrum_kv.demo.run_demo`, its logits recorded). The
samples of two runs are paired by (session, turn, sample index) where their prompts are equal (a
conversation's later turns resend its earlier replies, so a reply that differs changes the next
prompt: such turns are counted, not compared). Per dtype and precision:
  - same tokens: the share of float32's generated tokens that the run generated identically, up to
    each sample's first difference (what follows a difference is another continuation);
  - samples equal: the share of paired samples whose whole reply is identical;
  - max logit diff: max |logits - float32 logits| / max |float32 logits| over the generated
    positions up to and including each sample's first difference (same context in both runs);
  - verify err: the demo's own --verify figure, max relative logit error against its NumPy
    reference, which quantizes K/V it computes itself (rounding-boundary flips of its float32
    K/V dominate this with quantized storage; docs/demo.md).
The model is the demo's NumPy decoder with random weights (`--preset`), so its logits are flat
and small differences flip ties more easily than a trained model's would.
"""

from __future__ import annotations

import argparse

import numpy as np

from ferrum_kv.demo.run import DemoOptions, run_demo


def serve(options: DemoOptions) -> tuple[dict, float]:
    """The run's finished samples by (session, turn, sample index), and its --verify error."""
    result = run_demo(options, verify_run=True, progress=False)
    if not result.verification.ok:
        raise SystemExit(f"{options.dtype} {options.precision}: the demo's own --verify failed")
    samples = {(s.request.session, s.request.turn, s.sample_index): s for s in result.samples}
    return samples, result.verification.max_relative_error


def compare(baseline: dict, run: dict) -> dict:
    same_tokens = total_tokens = equal_samples = paired = unpaired = 0
    max_diff = 0.0
    for key, base in baseline.items():
        other = run.get(key)
        if other is None or not np.array_equal(base.request.prompt, other.request.prompt):
            unpaired += 1
            continue
        paired += 1
        a, b = base.generated, other.generated
        differs = np.flatnonzero(a[:len(b)] != b[:len(a)])
        prefix = int(differs[0]) if differs.size else min(len(a), len(b))
        same_tokens += prefix
        total_tokens += len(a)
        equal_samples += int(np.array_equal(a, b))
        for position in range(min(prefix + 1, len(base.logits), len(other.logits))):
            reference = base.logits[position]
            diff = np.abs(other.logits[position] - reference).max() / np.abs(reference).max()
            max_diff = max(max_diff, float(diff))
    return {"same_tokens": same_tokens / max(total_tokens, 1),
            "samples_equal": equal_samples / max(paired, 1), "paired": paired,
            "unpaired": unpaired, "max_logit_diff": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtypes", default="bfloat16,int8,fp8_e4m3,fp8_e5m2,int4")
    parser.add_argument("--precisions", default="exact,fast")
    args = parser.parse_args()
    common = dict(preset=args.preset, sessions=args.sessions, seed=args.seed)
    baseline, _ = serve(DemoOptions(dtype="float32", **common))
    print(f"demo workload: preset {args.preset}, {args.sessions} sessions, seed {args.seed}; "
          f"{len(baseline)} samples over float32 storage")
    print(f"{'dtype':9s} {'precision':9s} {'same tokens':>11s} {'samples equal':>13s} "
          f"{'paired':>6s} {'unpaired':>8s} {'max logit diff':>14s} {'verify err':>10s}")
    for dtype in args.dtypes.split(","):
        for precision in args.precisions.split(","):
            run, verify_error = serve(DemoOptions(dtype=dtype, precision=precision, **common))
            row = compare(baseline, run)
            print(f"{dtype:9s} {precision:9s} {row['same_tokens']:11.1%} "
                  f"{row['samples_equal']:13.1%} {row['paired']:6d} {row['unpaired']:8d} "
                  f"{row['max_logit_diff']:14.2e} {verify_error:10.2e}", flush=True)


if __name__ == "__main__":
    main()
