"""The demo's outputs: the summary table and the plot of block usage and hit rate over the steps."""

from __future__ import annotations

from typing import Optional

from ferrum_kv.demo.reference import VerifyReport
from ferrum_kv.demo.scheduler import StepRecord


def format_summary(summary: dict, verification: Optional[VerifyReport] = None) -> str:
    """The summary table (and the verification's lines) as text.

    Parameters
    ----------
    summary : dict
        ``DemoResult.summary``.
    verification : VerifyReport, optional
    """
    s = summary
    rows = [
        ("model / K/V dtype", f"{s['model']} / {s['dtype']}"),
        ("requests (samples)", f"{s['requests']} ({s['samples']})"),
        ("prompt tokens", f"{s['prompt_tokens']}"),
        ("generated tokens", f"{s['generated_tokens']}"),
        ("tokens run through the model", f"{s['computed_tokens']} in {s['steps']} steps"),
        ("wall time", f"{s['elapsed_s']:.1f} s"),
        ("throughput (prompt + generated)", f"{s['tokens_per_s']:.0f} tokens/s"),
        ("generation throughput", f"{s['generated_tokens_per_s']:.0f} tokens/s"),
        ("mean time to first token", f"{s['mean_ttft_steps']:.1f} steps ({s['admission_order']})"),
        ("prefix hit rate (tokens)", f"{s['prefix_hit_rate']:.1%} ({s['prefix_hit_tokens']} tokens)"),
        ("prompt tokens shared within a step", f"{s['shared_in_step_tokens']}"),
        ("whole-prompt hits (no prefill)", f"{s['whole_prompt_hits']}"),
        ("peak blocks used", f"{s['peak_blocks_used']} of {s['num_blocks']}"),
        ("preemptions (swap / recompute)",
         f"{s['preemptions']} ({s['preemptions_by_swap']} / {s['preemptions_by_recompute']})"),
        ("swaps out / in", f"{s['swap_outs']} / {s['swap_ins']}"),
        ("copy-on-write block copies", f"{s['cow_copies']}"),
        ("prefix-cache evictions", f"{s['evictions']}"),
    ]
    if s.get("tiers"):
        rows += [
            ("tiers", ", ".join(s["tiers"])),
            ("prefill tokens loaded from tiers", f"{s['tier_loaded_tokens']}"),
            ("blocks written to tiers", f"{s['tier_blocks_written']}"),
            ("tier errors and bad values", f"{s['tier_errors']}"),
        ]
    if verification is not None:
        v = verification
        rows += [
            ("verify: samples / steps", f"{v.samples} / {v.steps} in {s['verify_s']:.1f} s"),
            ("verify: max relative logit error", f"{v.max_relative_error:.1e} (tolerance {v.tolerance:.0e})"),
            ("verify: ties / mismatches", f"{v.ties} / {len(v.mismatches)}"),
            ("verify", "OK: identical tokens" if v.ok else "FAILED"),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if verification is not None:
        lines += [f"  mismatch: request {m.request_id} sample {m.sample_index} position "
                  f"{m.position}: relative error {m.relative_error:.1e}, served token "
                  f"{m.served_token}, reference {m.reference_token}"
                  for m in verification.mismatches[:10]]
    return "\n".join(lines)


def summary_json(summary: dict, verification: Optional[VerifyReport] = None) -> dict:
    """The JSON object of ``--json``: the summary, plus ``verify`` when verified."""
    result = dict(summary)
    if verification is not None:
        result["verify"] = verification.as_dict()
    return result


def plot_history(history: list[StepRecord], path: str) -> None:
    """Draw blocks held, blocks cached and the cumulative prefix hit rate per step into ``path``.

    Raises
    ------
    ImportError
        Without matplotlib (the ``plot`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r.step for r in history]
    fig, (blocks, hits) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    blocks.stackplot(steps, [r.blocks_held for r in history], [r.blocks_cached for r in history],
                     labels=["held by sequences", "cached (evictable)"], step="post")
    blocks.set_ylabel("device blocks")
    blocks.legend(loc="upper right")
    hits.plot(steps, [100 * r.prefix_hit_rate for r in history])
    hits.set_ylabel("prefix hit rate (%, cumulative)")
    hits.set_xlabel("scheduler step")
    fig.suptitle("ferrum-kv demo: block usage and prefix hits")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
