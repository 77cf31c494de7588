"""Scheduler simulation: the cost of one decode step's KV-cache bookkeeping.

256 running sequences; each step appends one token to every sequence (allocating a block when
one fills), then builds the batch metadata the kernels need (dense block tables, context lengths,
slot mapping of the new tokens). Every 50 steps 10% of the sequences finish and as many new ones
arrive with random prompts. Side by side in one run:

  ferrum-kv   PagedKvCache.append_batch + batch_metadata (C++)
  ferrum-kv + prefix caching
              the same with enable_prefix_caching=True and all prompts distinct (nothing hits):
              prompts are keyed on arrival and published after their prefill (one
              mark_computed_batch per round, which both ferrum-kv variants call, as an engine
              would), and each decode step publishes the blocks that fill: the cost of caching
              when it never pays
  python      a pure-Python manager built the way vLLM's v1 block manager works: a block object
              per block with a ref count, a doubly linked free queue, a dict from request to its
              block list, and a persistent NumPy block table updated incrementally (like vLLM's
              input batch), with vectorised NumPy for context lengths and slots

    python bench/bench_scheduler.py  (or python -m ferrum_kv.benchmarks.scheduler) [--seqs 256] [--steps 500] [--json FILE]
    python bench/bench_scheduler.py --caching-ab 8 --steps 300   (prefix caching on vs off only)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ferrum_kv as fkv
from ferrum_kv.benchmarks.common import Result, report

BLOCK_SIZE = 16


class Block:
    __slots__ = ("block_id", "ref_cnt", "prev", "next")

    def __init__(self, block_id: int):
        self.block_id, self.ref_cnt, self.prev, self.next = block_id, 0, None, None


class FreeBlockQueue:
    """Doubly linked list of free blocks with sentinels (vLLM's FreeKVCacheBlockQueue)."""

    def __init__(self, blocks: list[Block]):
        self.head, self.tail = Block(-1), Block(-1)
        self.head.next, self.tail.prev = self.tail, self.head
        self.size = 0
        for b in blocks:
            self.append(b)

    def popleft(self) -> Block:
        if self.size == 0:
            raise fkv.OutOfBlocksError("no free blocks")
        b = self.head.next
        self.head.next, b.next.prev = b.next, self.head
        b.prev = b.next = None
        self.size -= 1
        return b

    def append(self, b: Block) -> None:
        last = self.tail.prev
        last.next, b.prev, b.next, self.tail.prev = b, last, self.tail, b
        self.size += 1


class PythonManager:
    def __init__(self, num_blocks: int, max_seqs: int, max_blocks_per_seq: int):
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.req_blocks: dict[int, list[Block]] = {}
        self.num_tokens: dict[int, int] = {}
        self.row_of: dict[int, int] = {}
        self.free_rows = list(range(max_seqs))
        self.block_table = np.full((max_seqs, max_blocks_per_seq), -1, np.int32)
        self.context_lens = np.zeros(max_seqs, np.int32)

    def allocate(self, n: int) -> list[Block]:
        if n > self.free_queue.size:
            raise fkv.OutOfBlocksError(f"need {n} blocks")
        out = [self.free_queue.popleft() for _ in range(n)]
        for b in out:
            b.ref_cnt = 1
        return out

    def add_sequence(self, seq_id: int, prompt: np.ndarray) -> None:
        num_tokens = len(prompt)
        blocks = self.allocate(-(-num_tokens // BLOCK_SIZE))
        row = self.free_rows.pop()
        self.req_blocks[seq_id], self.num_tokens[seq_id], self.row_of[seq_id] = blocks, num_tokens, row
        self.block_table[row, : len(blocks)] = [b.block_id for b in blocks]
        self.context_lens[row] = num_tokens

    def append_batch(self, seq_ids: list[int]) -> None:
        needed = 0
        for s in seq_ids:  # all-or-nothing: count first
            needed += self.num_tokens[s] % BLOCK_SIZE == 0
        if needed > self.free_queue.size:
            raise fkv.OutOfBlocksError(f"need {needed} blocks")
        for s in seq_ids:
            if self.num_tokens[s] % BLOCK_SIZE == 0:
                blocks = self.req_blocks[s]
                b = self.allocate(1)[0]
                self.block_table[self.row_of[s], len(blocks)] = b.block_id
                blocks.append(b)
            self.num_tokens[s] += 1
            self.context_lens[self.row_of[s]] += 1

    def batch_metadata(self, seq_ids: list[int]):
        rows = np.fromiter((self.row_of[s] for s in seq_ids), np.int64, len(seq_ids))
        context_lens = self.context_lens[rows]
        max_blocks = int((context_lens.max() + BLOCK_SIZE - 1) // BLOCK_SIZE)
        block_tables = self.block_table[rows, :max_blocks]
        last = context_lens - 1
        slots = block_tables[np.arange(len(rows)), last // BLOCK_SIZE] * BLOCK_SIZE + last % BLOCK_SIZE
        return block_tables, context_lens, slots

    def free_sequence(self, seq_id: int) -> None:
        for b in reversed(self.req_blocks.pop(seq_id)):
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                self.free_queue.append(b)
        row = self.row_of.pop(seq_id)
        self.block_table[row] = -1
        self.free_rows.append(row)
        del self.num_tokens[seq_id]


class FerrumManager:
    def __init__(self, num_blocks: int, prefix_caching: bool = False):
        cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=1, head_dim=1, block_size=BLOCK_SIZE,
                              num_blocks=num_blocks, enable_prefix_caching=prefix_caching)
        self.cache = fkv.PagedKvCache(cfg)
        self.rng = np.random.default_rng(1234)

    def add_sequence(self, seq_id: int, prompt: np.ndarray) -> None:
        self.cache.add_sequence(seq_id, prompt)

    def prefilled(self, seq_ids: list[int], prompts: list[np.ndarray]) -> None:
        self.cache.mark_computed_batch(seq_ids, [len(p) for p in prompts])

    def append_batch(self, seq_ids: np.ndarray) -> None:
        self.cache.append_batch(seq_ids, np.ones(len(seq_ids), np.int32))

    def batch_metadata(self, seq_ids: np.ndarray):
        m = self.cache.batch_metadata(seq_ids)
        return m.block_tables, m.context_lens, m.slot_mapping

    def free_sequence(self, seq_id: int) -> None:
        self.cache.free_sequence(seq_id)


def simulate(manager, seqs: int, steps: int, seed: int, as_array: bool) -> tuple[float, float]:
    """Drive manager through the workload; returns (seconds per decode step, seconds per
    arrival/finish round; steps // 50 rounds). A manager may define prepare(seq_id, prompt), called outside the
    timers before each add_sequence (e.g. to build a request object), and prefilled(seq_ids,
    prompts), called once the sequences of a round are added (their prompts' K/V computed)."""
    rng = np.random.default_rng(seed)
    prepare = getattr(manager, "prepare", lambda seq_id, prompt: None)
    prefilled = getattr(manager, "prefilled", lambda seq_ids, prompts: None)

    def prompt():  # distinct random token ids: no two prompts share a block
        return rng.integers(0, 2**31 - 1, int(rng.integers(100, 1000)), dtype=np.int32)

    running = list(range(seqs))
    first = [prompt() for _ in running]
    for seq_id, tokens in zip(running, first):
        prepare(seq_id, tokens)
        manager.add_sequence(seq_id, tokens)
    prefilled(running, first)
    next_id = seqs
    step_time = churn_time = 0.0
    for step in range(1, steps + 1):
        ids = np.array(running, np.int64) if as_array else list(running)
        start = time.perf_counter()
        manager.append_batch(ids)
        manager.batch_metadata(ids)
        step_time += time.perf_counter() - start
        if step % 50 == 0:
            finishing = [running.pop(int(rng.integers(len(running)))) for _ in range(seqs // 10)]
            arriving = [prompt() for _ in finishing]
            new_ids = list(range(next_id, next_id + len(arriving)))
            next_id += len(arriving)
            for new_id, tokens in zip(new_ids, arriving):
                prepare(new_id, tokens)
            start = time.perf_counter()
            for old_id, new_id, tokens in zip(finishing, new_ids, arriving):
                manager.free_sequence(old_id)
                manager.add_sequence(new_id, tokens)
            prefilled(new_ids, arriving)
            churn_time += time.perf_counter() - start
            running += new_ids
    return step_time / steps, churn_time / (steps // 50)


def run(seqs: int = 256, steps: int = 500, repeat: int = 3) -> Result:
    max_blocks = (1000 + steps) // BLOCK_SIZE + 2
    num_blocks = seqs * max_blocks + 64
    cases = [
        ("ferrum-kv", lambda: FerrumManager(num_blocks), True),
        ("ferrum-kv + prefix caching", lambda: FerrumManager(num_blocks, True), True),
        ("python (vLLM-style)", lambda: PythonManager(num_blocks, seqs, max_blocks), False),
    ]
    results = {}
    for _ in range(repeat):  # best of `repeat` identical runs, interleaved so drift hits all alike
        for name, make, as_array in cases:
            r = simulate(make(), seqs, steps, 0, as_array)
            results[name] = min(results.get(name, r), r)
    ours, theirs = results["ferrum-kv"], results["python (vLLM-style)"]
    caching = results["ferrum-kv + prefix caching"]
    rows = [
        {"manager": name, "us_per_step": f"{r[0] * 1e6:.1f}",
         "us_per_seq_per_step": f"{r[0] * 1e6 / seqs:.3f}",
         "us_per_churn_round": f"{r[1] * 1e6:.0f}"}
        for name, r in results.items()
    ]
    return Result(
        f"Scheduler step: {seqs} sequences, {steps} decode steps (append one token to every "
        f"sequence + batch metadata); every 50 steps {seqs // 10} finish and as many arrive",
        rows,
        [f"speedup per step vs pure Python: {theirs[0] / ours[0]:.1f}x; per churn round: "
         f"{theirs[1] / ours[1]:.1f}x",
         f"prefix caching with zero hits: step {caching[0] / ours[0]:.2f}x the time without, "
         f"churn round {caching[1] / ours[1]:.2f}x"])


def caching_overhead(seqs: int = 256, steps: int = 300, runs: int = 8) -> Result:
    """Prefix caching at zero hits against no caching, as `runs` A/B pairs (each pair the same
    seeded workload, alternately), reporting every pair's ratio and the medians."""
    max_blocks = (1000 + steps) // BLOCK_SIZE + 2
    num_blocks = seqs * max_blocks + 64
    rows = []

    def total(r):  # the whole run: every step and every round
        return r[0] * steps + r[1] * (steps // 50)

    for seed in range(runs):
        off = simulate(FerrumManager(num_blocks), seqs, steps, seed, True)
        on = simulate(FerrumManager(num_blocks, True), seqs, steps, seed, True)
        rows.append({"run": seed, "off_us_per_step": f"{off[0] * 1e6:.1f}",
                     "on_us_per_step": f"{on[0] * 1e6:.1f}", "step_ratio": on[0] / off[0],
                     "off_us_per_churn": f"{off[1] * 1e6:.0f}", "on_us_per_churn": f"{on[1] * 1e6:.0f}",
                     "churn_ratio": on[1] / off[1], "total_ratio": total(on) / total(off)})
    ratios = {name: statistics.median(r[name] for r in rows)
              for name in ("step_ratio", "churn_ratio", "total_ratio")}
    for r in rows:
        for name in ratios:
            r[name] = f"{r[name]:.3f}"
    return Result(f"Prefix caching at zero hits vs off: {runs} interleaved pairs, {seqs} sequences, "
                  f"{steps} steps", rows,
                  [f"median: step {ratios['step_ratio']:.3f}x, churn round "
                   f"{ratios['churn_ratio']:.2f}x, whole run (steps + rounds) "
                   f"{ratios['total_ratio']:.3f}x the time without caching"])


def quick() -> Result:
    return run(steps=100, repeat=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="KV-cache bookkeeping per decode step")
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--caching-ab", type=int, metavar="RUNS",
                        help="instead: RUNS interleaved pairs of ferrum-kv with and without prefix "
                             "caching (nothing hits), and the median ratios")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.caching_ab:
        report(caching_overhead(args.seqs, args.steps, args.caching_ab), args.json)
    else:
        report(run(args.seqs, args.steps, args.repeat), args.json)


if __name__ == "__main__":
    main()
