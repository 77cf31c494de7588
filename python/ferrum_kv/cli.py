"""The ``ferrum-kv`` command (also ``python -m ferrum_kv``).

Subcommands:

- ``demo``: serve a synthetic workload with a small NumPy Llama-style model over PagedKvCache
  (continuous batching, chunked prefill, prefix caching, preemption by swap or recompute,
  parallel sampling by fork) and print a summary; ``--verify`` checks every token against a
  contiguous reference (docs/demo.md).
- ``plan``: KV-cache capacity of a model geometry in a memory budget.
- ``bench``: the benchmark suite in quick mode (``ferrum_kv.benchmarks``).

Errors (bad options, impossible configurations) are one line on stderr and a non-zero exit
status: 2 for usage errors, 1 for a failed run or verification.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from fractions import Fraction
from typing import NoReturn, Optional, Sequence

import ferrum_kv as fkv

# Storage dtypes, as CacheConfig spells them ("fp8" is accepted for "fp8_e4m3").
STORAGE_DTYPES = ("float32", "float16", "bfloat16", "int8", "fp8_e4m3", "fp8_e5m2", "int4")
DTYPES = STORAGE_DTYPES + ("fp8",)
EVICTION_POLICIES = ("lru", "fifo", "priority_lru", "clock")

# (num_layers, num_kv_heads, head_dim) from each model's published config.json.
MODEL_GEOMETRIES = {
    "Llama-3-8B": (32, 8, 128),
    "Llama-3-70B": (80, 8, 128),
    "Mistral-7B": (32, 8, 128),
    "Qwen2.5-7B": (28, 4, 128),
}

_MEMORY_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


# Digits a memory size may have (10**30 bytes is far beyond any machine).
_MAX_SIZE_DIGITS = 30


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def parse_memory(text: str) -> int:
    """Bytes in a size like ``16GiB``, ``512MiB``, ``1.5GB`` or ``4096`` (binary units are powers
    of 1024, decimal ones of 1000; no unit: bytes).

    Raises
    ------
    argparse.ArgumentTypeError
        For anything else, or a size under one byte.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if unit not in _MEMORY_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size like 16GiB, 512MiB, 1.5GB or a byte count, got {text!r}")
    if len(match.group(1)) > _MAX_SIZE_DIGITS:
        raise argparse.ArgumentTypeError(f"the memory budget is absurdly large: {text!r}")
    size = int(Fraction(match.group(1)) * _MEMORY_UNITS[unit])  # exact: no float overflow
    if size < 1:
        raise argparse.ArgumentTypeError(f"the memory budget must be at least one byte, got {text!r}")
    return size


def _model_geometry(name: str) -> str:
    """Case-insensitive preset lookup; returns the canonical name."""
    for preset in MODEL_GEOMETRIES:
        if preset.lower() == name.lower():
            return preset
    raise argparse.ArgumentTypeError(
        f"unknown model {name!r} (choose from {', '.join(MODEL_GEOMETRIES)})")


def build_parser() -> argparse.ArgumentParser:
    from ferrum_kv.demo.presets import HF_MODEL_PRESETS, MODEL_PRESETS
    from ferrum_kv.demo.run import DemoOptions
    from ferrum_kv.demo.scheduler import ADMISSION_ORDERS

    defaults = DemoOptions()
    parser = _Parser(prog="ferrum-kv", description="ferrum-kv: a KV-cache manager for LLM "
                     "inference. Run a serving demo, plan a cache's capacity, or benchmark.")
    parser.add_argument("--version", action="version", version=f"ferrum-kv {fkv.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo", help="serve a synthetic workload with a small NumPy model over PagedKvCache",
        description="Serve a synthetic chat workload with a small Llama-style NumPy model "
        "(random weights) over PagedKvCache: continuous batching, chunked prefill, prefix "
        "caching, preemption (swap or recompute), parallel sampling by fork.")
    workload = demo.add_argument_group("workload and model")
    workload.add_argument("--sessions", type=_positive_int, default=defaults.sessions,
                          help="conversations plus one-shot requests (default %(default)s)")
    workload.add_argument("--model", dest="preset",
                          choices=[*sorted(MODEL_PRESETS), *HF_MODEL_PRESETS],
                          default=defaults.preset,
                          help="model preset (default %(default)s); hf:ARCH: a small random "
                          "transformers model (needs pip install 'ferrum-kv[hf]')")
    workload.add_argument("--seed", type=_non_negative_int, default=defaults.seed,
                          help="weights and workload seed (default %(default)s)")
    workload.add_argument("--resend", dest="resend_fraction", type=_fraction,
                          default=defaults.resend_fraction,
                          help="share of one-shot requests sent again, unchanged, after their "
                          "reply (regenerate / retry; default %(default)s)")
    cache = demo.add_argument_group("cache")
    cache.add_argument("--blocks", dest="num_blocks", type=_positive_int,
                       default=defaults.num_blocks,
                       help="device blocks (default %(default)s: small enough to preempt)")
    cache.add_argument("--host-blocks", dest="num_host_blocks", type=_non_negative_int,
                       default=defaults.num_host_blocks,
                       help="host-tier blocks for swapping; 0: preemption always recomputes "
                       "(default %(default)s)")
    cache.add_argument("--block-size", type=_positive_int, default=defaults.block_size,
                       help="tokens per block (default %(default)s)")
    cache.add_argument("--dtype", choices=DTYPES, default=defaults.dtype,
                       help="K/V storage dtype (default %(default)s)")
    cache.add_argument("--eviction-policy", choices=EVICTION_POLICIES,
                       default=defaults.eviction_policy,
                       help="prefix-cache eviction order (default %(default)s)")
    cache.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                       help="disable prefix caching")
    cache.add_argument("--prompt-logits", type=_non_negative_int, default=defaults.prompt_logits,
                       help="whole-prompt hits: prompts whose last-token logits the cache keeps, "
                       "so that a resent request skips prefill; 0: off (default %(default)s)")
    tiers = demo.add_argument_group("storage tiers (docs/tiers.md)")
    tiers.add_argument("--tier", dest="tiers", metavar="SPEC", action="append", default=[],
                       help="keep prefix-cache blocks in a tier too: disk:PATH, redis://HOST:PORT"
                       "/DB, rediss://..., redis+cluster://HOST:PORT (repeat: fastest first)")
    tiers.add_argument("--restart", action="store_true",
                       help="run the workload, drop the cache, run it again on a new cache over "
                       "the same tiers (a restarted or second replica) and report the prefill "
                       "tokens the tiers saved")
    sched = demo.add_argument_group("scheduler")
    sched.add_argument("--token-budget", type=_positive_int, default=defaults.token_budget,
                       help="prefill plus decode tokens per step (default %(default)s)")
    sched.add_argument("--max-seqs", dest="max_num_seqs", type=_positive_int,
                       default=defaults.max_num_seqs,
                       help="running sequences admitted at most (default %(default)s)")
    sched.add_argument("--admission-order", choices=ADMISSION_ORDERS,
                       default=defaults.admission_order,
                       help="order in which waiting requests are admitted: by arrival, or "
                       "shortest remaining prefill first (prompt minus its prefix-cache hit; "
                       "lower mean time to first token) (default %(default)s)")
    sched.add_argument("--max-wait-steps", type=_positive_int, default=defaults.max_wait_steps,
                       help="with shortest_prefill: a request waiting this many steps goes "
                       "first (no starvation) (default %(default)s)")
    sched.add_argument("--threads", type=_positive_int, default=defaults.threads,
                       help="threads for BLAS and the attention kernels (default %(default)s)")
    sched.add_argument("--precision", choices=("exact", "fast"), default=defaults.precision,
                       help="attention kernels' precision: fast uses bfloat16 / int8 dot "
                       "products and float16 arithmetic for fp8 where the CPU has them "
                       "(default %(default)s)")
    output = demo.add_argument_group("output")
    output.add_argument("--verify", action="store_true",
                        help="check every token against a contiguous NumPy reference; exit "
                        "status 1 on any mismatch")
    output.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object (and nothing else on stdout)")
    output.add_argument("--plot", metavar="FILE.png",
                        help="draw block usage and prefix hit rate per step (needs matplotlib)")
    output.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar (default: shown when stderr is a terminal)")
    demo.set_defaults(handler=_demo)

    plan = commands.add_parser(
        "plan", help="KV-cache capacity of a model in a memory budget",
        description="Bytes per token and per block, blocks in a memory budget and concurrent "
        "sequences of a context length, for a model geometry (a preset or explicit numbers).")
    plan.add_argument("--model", type=_model_geometry,
                      help=f"model preset: {', '.join(MODEL_GEOMETRIES)} (case-insensitive)")
    plan.add_argument("--layers", type=_positive_int, help="number of layers (with --kv-heads, "
                      "--head-dim, instead of --model)")
    plan.add_argument("--kv-heads", type=_positive_int, help="KV heads per layer")
    plan.add_argument("--head-dim", type=_positive_int, help="head dimension")
    plan.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                      help="K/V storage dtype (default %(default)s)")
    plan.add_argument("--block-size", type=_positive_int, default=16,
                      help="tokens per block (default %(default)s)")
    plan.add_argument("--memory", type=parse_memory, default=parse_memory("16GiB"),
                      help="memory for the K/V cache, e.g. 16GiB, 512MiB, 80GB (default 16GiB)")
    plan.add_argument("--context-len", type=_positive_int, default=8192,
                      help="tokens per sequence (default %(default)s)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(handler=_plan)

    bench = commands.add_parser("bench", help="the benchmark suite in quick mode",
                                description="Run the benchmark suite (ferrum_kv.benchmarks) in "
                                "quick mode and print one table.")
    bench.set_defaults(handler=_bench)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from ferrum_kv.demo.report import format_summary, plot_history, summary_json
    from ferrum_kv.demo.run import DemoOptions, run_demo

    if args.preset.startswith("hf:"):
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            _fail(f"--model {args.preset} needs torch and transformers: "
                  "pip install 'ferrum-kv[hf]'", status=2)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _fail("--plot needs matplotlib: pip install 'ferrum-kv[plot]'", status=2)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus and args.threads > cpus:
        print(f"ferrum-kv: warning: --threads {args.threads} is more than the {cpus} CPUs this "
              "process may use; oversubscribed threads make the demo much slower",
              file=sys.stderr)
    if args.restart and not args.tiers:
        _fail("--restart needs at least one --tier", status=2)
    if args.tiers and not args.prefix_caching:
        _fail("--tier needs prefix caching (drop --no-prefix-caching)", status=2)
    try:
        if args.tiers:
            from ferrum_kv.tiers.spec import parse_tier

            for spec in args.tiers:
                parse_tier(spec)
    except (ValueError, ImportError) as e:
        _fail(str(e), status=2)
    options = DemoOptions(
        preset=args.preset, sessions=args.sessions, num_blocks=args.num_blocks,
        num_host_blocks=args.num_host_blocks, block_size=args.block_size, dtype=args.dtype,
        eviction_policy=args.eviction_policy, prefix_caching=args.prefix_caching,
        token_budget=args.token_budget, max_num_seqs=args.max_num_seqs, seed=args.seed,
        resend_fraction=args.resend_fraction, prompt_logits=args.prompt_logits,
        threads=args.threads, tiers=tuple(args.tiers),
        precision=args.precision, admission_order=args.admission_order,
        max_wait_steps=args.max_wait_steps)
    first = run_demo(options, verify_run=args.verify, progress=args.progress) \
        if args.restart else None
    result = run_demo(options, verify_run=args.verify, progress=args.progress)
    if args.plot is not None:
        plot_history(result.history, args.plot)
    if args.json:
        out = summary_json(result.summary, result.verification)
        if first is not None:
            out = {"first": summary_json(first.summary, first.verification), "restarted": out}
        print(json.dumps(out))
    else:
        if first is not None:
            print("== first run ==")
            print(format_summary(first.summary, first.verification))
            print("\n== restarted: a new cache over the same tiers ==")
        print(format_summary(result.summary, result.verification))
        if first is not None:
            saved = result.summary["tier_loaded_tokens"]
            print(f"\nprefill tokens saved through the tiers after the restart: {saved} "
                  f"(model ran {first.summary['computed_tokens']} tokens in the first run, "
                  f"{result.summary['computed_tokens']} after the restart)")
        if args.plot is not None:
            print(f"plot written to {args.plot}")
    runs = [r for r in (first, result) if r is not None]
    return 0 if all(r.verification is None or r.verification.ok for r in runs) else 1


def plan_capacity(num_layers: int, num_kv_heads: int, head_dim: int, dtype: str, block_size: int,
                  memory: int, context_len: int) -> dict:
    """KV-cache capacity arithmetic (nothing is allocated).

    Returns
    -------
    dict
        bytes_per_token (a float: quantized blocks carry per-row parameters and padding),
        bytes_per_block, num_blocks (whole blocks in ``memory``), tokens (their capacity),
        blocks_per_sequence (``ceil(context_len / block_size)``), concurrent_sequences (of
        ``context_len`` tokens each) and tokens_per_gib: for every storage dtype, the tokens
        whole blocks of this geometry hold in 1 GiB.
    """
    config = fkv.CacheConfig(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim,
                             block_size=block_size, num_blocks=1, dtype=dtype)
    num_blocks = memory // config.bytes_per_block
    blocks_per_sequence = -(-context_len // block_size)
    return {
        "num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
        "dtype": dtype, "block_size": block_size, "memory_bytes": memory,
        "context_len": context_len,
        "bytes_per_token": config.bytes_per_token,
        "bytes_per_block": config.bytes_per_block,
        "num_blocks": num_blocks,
        "tokens": num_blocks * block_size,
        "blocks_per_sequence": blocks_per_sequence,
        "concurrent_sequences": num_blocks // blocks_per_sequence,
        "tokens_per_gib": {
            name: (2**30 // fkv.CacheConfig(num_layers=num_layers, num_kv_heads=num_kv_heads,
                                            head_dim=head_dim, block_size=block_size,
                                            num_blocks=1, dtype=name).bytes_per_block)
            * block_size
            for name in STORAGE_DTYPES
        },
    }


def _plan(args: argparse.Namespace) -> int:
    explicit = (args.layers, args.kv_heads, args.head_dim)
    if args.model is not None and any(v is not None for v in explicit):
        _fail("give either --model or --layers/--kv-heads/--head-dim, not both", status=2)
    if args.model is None and None in explicit:
        _fail("give --model or all of --layers, --kv-heads and --head-dim", status=2)
    geometry = MODEL_GEOMETRIES[args.model] if args.model else explicit
    plan = plan_capacity(*geometry, dtype=args.dtype, block_size=args.block_size,
                         memory=args.memory, context_len=args.context_len)
    if args.json:
        print(json.dumps({"model": args.model, **plan}))
        return 0
    p = plan
    name = f"{args.model}: " if args.model else ""
    rows = [
        ("model", f"{name}{p['num_layers']} layers, {p['num_kv_heads']} KV heads, head_dim "
                  f"{p['head_dim']}, {p['dtype']}"),
        ("bytes per token", _bytes(p["bytes_per_token"])),
        ("bytes per block", f"{_bytes(p['bytes_per_block'])} ({p['block_size']} tokens)"),
        ("tokens per GiB", ", ".join(f"{k} {v}" for k, v in p["tokens_per_gib"].items())),
        ("memory", _bytes(p["memory_bytes"])),
        ("blocks", f"{p['num_blocks']} ({p['tokens']} tokens)"),
        ("context length", f"{p['context_len']} tokens = {p['blocks_per_sequence']} blocks"),
        ("concurrent sequences", f"{p['concurrent_sequences']}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def _bytes(n: float) -> str:
    """``n`` exactly (to 0.01 B when not whole), and in the largest binary unit it reaches."""
    exact = f"{int(n)}" if n == int(n) else f"{n:.2f}"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{exact} B ({n / size:.1f} {unit})"
    return f"{exact} B"


def _bench(args: argparse.Namespace) -> int:
    from ferrum_kv import benchmarks  # imported here: it is not needed by the other commands

    return benchmarks.run_quick_suite()


def _fail(message: str, status: int = 1) -> NoReturn:
    print(f"ferrum-kv: error: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ferrum-kv`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, fkv.Error, OSError) as error:  # a configuration that cannot work
        _fail(str(error))
    except MemoryError as error:  # a cache larger than the machine
        _fail(f"out of memory: {error}" if str(error) else "out of memory")
    except KeyboardInterrupt:
        _fail("interrupted", status=130)
