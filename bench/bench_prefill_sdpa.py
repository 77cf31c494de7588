"""ferrum_kv's paged prefill kernel against torch's scaled_dot_product_attention (causal), the
attention of bench_transformers.py's model at 2K context, side by side in one process.

One layer of the model: a 2048-token prompt prefilled in one chunk, 8 query heads over 2 KV
heads (GQA 4), head_dim 64, float32 queries; K/V random. Cases, alternated round by round:

- ``sdpa``: ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)`` on
  [1, H, T, 64] tensors (what plain ``generate`` runs, without a padding mask);
- ``paged``: ``fkv.paged_attention_prefill`` over a PagedKvCache holding the prompt, in each
  storage dtype of ``--dtypes`` (float32 is what the transformers benchmark stores);
- ``paged + engine copies``: the same plus what the engine does around it per layer (q, k, v
  from torch's [1, H, T, D] to the kernels' [T, H, D] float32 layout, ``write_kv``, the output
  back to torch).

Each case runs with ``--threads`` torch threads and as many kernel threads; times are the median
of ``--rounds`` rounds (best of 3 calls each), in ms, with each case's ratio to sdpa.

    python bench/bench_prefill_sdpa.py [--tokens 2048] [--threads 1,2] [--rounds 7]
        [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import ferrum_kv as fkv

HQ, HKV, D, BLOCK = 8, 2, 64, 16


def best_of(call, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    t = args.tokens
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, HQ, t, D, generator=gen)
    k = torch.randn(1, HKV, t, D, generator=gen)
    v = torch.randn(1, HKV, t, D, generator=gen)
    caches = {}
    for dtype in args.dtypes.split(","):
        cache = fkv.PagedKvCache(fkv.CacheConfig(num_layers=1, num_kv_heads=HKV, head_dim=D,
                                                 block_size=BLOCK, num_blocks=t // BLOCK + 2,
                                                 dtype=dtype, enable_prefix_caching=False))
        cache.add_sequence(0, np.arange(t))
        caches[dtype] = cache
    slots = caches[next(iter(caches))].slot_mapping(0, 0, t)
    k_rows = k[0].transpose(0, 1).contiguous().numpy()
    v_rows = v[0].transpose(0, 1).contiguous().numpy()
    q_rows = q[0].transpose(0, 1).contiguous().numpy()
    for cache in caches.values():
        cache.write_kv(0, slots, k_rows, v_rows)
    lens = [t]

    def paged(cache, threads):
        return lambda: fkv.paged_attention_prefill(q_rows, cache, 0, [0], lens,
                                                   num_threads=threads)

    def paged_with_copies(cache, threads):
        def call():
            rows = [x[0].transpose(0, 1).to(torch.float32).contiguous().numpy() for x in (q, k, v)]
            cache.write_kv(0, slots, rows[1], rows[2])
            out = fkv.paged_attention_prefill(rows[0], cache, 0, [0], lens, num_threads=threads)
            return torch.from_numpy(out).view(1, t, HQ, D)
        return call

    # Correctness first: the kernel equals SDPA (float32 storage) to float32 rounding.
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    got = fkv.paged_attention_prefill(q_rows, caches.get("float32", next(iter(caches.values()))),
                                      0, [0], lens)
    err = float(np.abs(got - expected[0].transpose(0, 1).numpy()).max())
    print(f"max |paged - sdpa| = {err:.2e} ({next(iter(caches))} storage)")

    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        cases = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                 enable_gqa=True)}
        for dtype, cache in caches.items():
            cases[f"paged {dtype}"] = paged(cache, threads)
            cases[f"paged {dtype} + engine copies"] = paged_with_copies(cache, threads)
        for call in cases.values():
            call()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                times[name].append(best_of(cases[name]))
        base = statistics.median(times["sdpa"])
        print(f"{t} tokens, causal, {HQ}/{HKV} heads of {D}, {threads} thread(s) "
              f"(torch and kernel), median of {args.rounds} rounds:")
        for name in names:
            m = statistics.median(times[name])
            print(f"  {name:34s} {m * 1e3:8.2f} ms   {m / base:5.2f}x sdpa's time")


if __name__ == "__main__":
    main()
