"""A continuous-batching scheduler over PagedKvCache, with the decoder as its model.

Each ``step()``:

1. **Decode.** Every running sequence with a sampled-but-not-yet-run token appends it
   (``append_batch``: one call for the batch). When blocks run out, the most recently admitted
   running sequence is preempted and the append retried: it is swapped out to the host tier when
   that has room, else freed, to be recomputed from its tokens later (prefix caching makes that
   cheap when its blocks are still cached).
2. **Prefill.** Running sequences still prefilling get chunks, oldest first, from what is left of
   the step's token budget.
3. **Resume and admit** (only when nothing was preempted this step, so freed room is not
   immediately refilled): swapped sequences are swapped back in (they run from the next step), then
   waiting sequences, preempted-for-recompute ones first, are added with ``add_sequence`` (its
   prefix hit counts as computed) and get a first chunk, while the budget, the sequence limit and
   free blocks (above a small watermark) allow. New requests are considered in arrival order
   (``admission_order="fcfs"``), or, with ``"shortest_prefill"``, in order of the prompt tokens
   each still has to compute (its length minus ``cached_prefix_len``, the prefix cache's hit now;
   ties by arrival), except that one which has waited ``max_wait_steps`` steps goes before all
   younger ones (aging: no request starves behind a stream of shorter ones). When the cache keeps
   prompt logits (``max_prompt_logits``), a new request is added with ``add_sequence_with_logits``
   instead: a prompt stored before (a resent request) is a whole-prompt hit, sampled from the
   stored logits at once with nothing to prefill. With prefix caching, a waiting sequence whose
   prompt shares full blocks that a running sequence is still prefilling stays waiting (in its
   place) until they are computed, then hits them; sequences behind it are considered meanwhile
   (``wait_for_shared_prefix``: requests sharing a system prompt that arrive together prefill it
   once, not once per request admitted before the first one finished it). When that sequence's
   chunk in this very step computes the shared blocks, the waiting one does not wait: it is
   admitted as a ``fork`` of those blocks (``num_tokens=``) with its own tokens appended, and its
   first chunk starts after them (``share_prefix_in_step``): each layer writes every row's K/V
   before any attention reads it, so its rows read the blocks the other rows write.
4. **Run** the decoder over the step's rows (decode rows, then chunks) through
   ``PagedStepAttention``, ``mark_computed_batch`` the written tokens, and sample greedily for
   every sequence whose rows reached its last token (storing a new prompt's logits with
   ``store_logits`` first, when the cache keeps them). (If the forward pass raises, the exception
   propagates after the sequences admitted as forks of a prefix in this step go back to
   waiting; every other count is still the cache's, so ``step`` may be called again.) A request
   with ``n > 1`` forks its prompt once it is computed: sample ``i`` starts with the ``i``-th
   most likely token (copy-on-write splits the shared last block on the first append). A sample
   that has generated ``max_new_tokens`` tokens (or its request's ``stop_token``) is freed; its
   blocks stay in the prefix cache.

The scheduler is model-agnostic: it drives any ``StepModel`` (the demo's NumPy ``Decoder``, or a
transformers model through ``ferrum_kv.integrations.transformers.Engine``) over requests from any
``RequestSource`` (the demo's ``Workload``, or the engine's list of prompts).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

import ferrum_kv as fkv
from ferrum_kv.demo.model import KvAttention
from ferrum_kv.demo.paged import PagedStepAttention
from ferrum_kv.demo.workload import Request


class ModelGeometry(Protocol):
    """What the scheduler reads of a model's configuration."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int


class StepModel(Protocol):
    """A model the scheduler runs: one forward pass over a step's packed rows, then logits of
    the rows it samples from (``ferrum_kv.demo.model.Decoder`` is one)."""

    config: ModelGeometry

    def forward(self, tokens: np.ndarray, positions: np.ndarray, attention: KvAttention) -> Any:
        """tokens, positions: [T] int32 (rows of several sequences, packed); ``attention`` stores
        each layer's K/V and attends. Returns per-row hidden states indexable by a list of rows."""

    def logits(self, hidden: Any) -> np.ndarray:
        """The selected rows of ``forward``'s result -> [R, vocab_size] float32."""


class RequestSource(Protocol):
    """Where requests come from and where replies go (``ferrum_kv.demo.workload.Workload`` is
    one): arrivals by step, and a callback per finished request."""

    @property
    def done(self) -> bool: ...

    @property
    def max_request_tokens(self) -> int: ...

    def next_arrival_step(self) -> Optional[int]: ...

    def arrivals(self, step: int) -> list[Request]: ...

    def finished(self, request: Request, reply: np.ndarray, step: int) -> None: ...


ADMISSION_ORDERS = ("fcfs", "shortest_prefill")
"""The values of ``SchedulerConfig.admission_order``."""


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling limits.

    Attributes
    ----------
    token_budget : int
        Rows (prefill chunk tokens plus decode tokens) per step.
    max_num_seqs : int
        Running sequences beyond which nothing new is admitted (forks of an admitted request
        may exceed it).
    watermark_blocks : int
        Blocks left free when admitting or swapping in while other sequences run, so that they
        can keep decoding for a while without preemption.
    record_logits : bool
        Keep every sample's logits (for ``--verify``).
    attention_precision : str
        ``precision`` of the attention kernels: "exact" or "fast" (``paged_attention_decode``).
    wait_for_shared_prefix : bool
        With prefix caching: a waiting request whose prompt starts with full blocks that a
        running sequence is still prefilling is not admitted until they are computed, so it
        reuses them instead of computing them again (requests sharing a system prompt that
        arrive together prefill it once); requests behind it that share nothing are admitted
        meanwhile.
    share_prefix_in_step : bool
        With ``wait_for_shared_prefix`` (and the cache's prefix caching): a waiting request
        whose shared full blocks are computed by another sequence's chunk in the current step is
        admitted in that step, sharing them (``fork(num_tokens=)``) instead of waiting for the
        next one; its first chunk starts after them. Counted in
        ``Scheduler.shared_in_step_tokens``, not in the cache's prefix hits. With a step budget
        larger than the shared prompt, the requests behind the first one get their first tokens
        a step earlier.
    admission_order : str
        The order in which waiting requests are admitted (preempted-for-recompute sequences
        always come first, in the order they were preempted from the back of the running list):
        "fcfs" (default), by arrival; "shortest_prefill", by the prompt tokens each still has to
        compute now (prompt length minus the prefix cache's hit, ``cached_prefix_len``; ties by
        arrival): shortest job first, which lowers the mean time to first token when requests
        of uneven lengths (or uneven suffixes after a shared system prompt) wait together (the
        transformers ``Engine``'s default: a ``generate`` call's prompts all arrive at once).
        For the demo's workload, arrivals spread over time under memory pressure, it was not
        consistently better (docs/demo.md), so the demo keeps arrival order by default.
    max_wait_steps : int
        With "shortest_prefill": a request that has waited this many steps (>= 1) goes before
        every request that has waited less, oldest first, so a long request is not starved by
        a stream of shorter ones: it is first in line at most ``max_wait_steps`` steps after it
        arrives (admitted then as soon as the budget, the sequence limit and the blocks allow).
        The default, 64, leaves a burst of requests in shortest-first order (32 prompts with a
        512-token budget are all admitted within about 12 steps) and bounds the extra wait.
    """

    token_budget: int = 256
    max_num_seqs: int = 24
    watermark_blocks: int = 2
    record_logits: bool = False
    attention_precision: str = "exact"
    wait_for_shared_prefix: bool = True
    share_prefix_in_step: bool = True
    admission_order: str = "fcfs"
    max_wait_steps: int = 64

    def __post_init__(self) -> None:
        if self.token_budget < 1 or self.max_num_seqs < 1 or self.watermark_blocks < 0:
            raise ValueError(f"bad scheduler limits: {self}")
        if self.attention_precision not in ("exact", "fast"):
            raise ValueError(f"attention_precision must be 'exact' or 'fast', got "
                             f"{self.attention_precision!r}")
        if self.admission_order not in ADMISSION_ORDERS:
            raise ValueError(f"admission_order must be one of "
                             f"{', '.join(map(repr, ADMISSION_ORDERS))}, got "
                             f"{self.admission_order!r}")
        if (not isinstance(self.max_wait_steps, int) or isinstance(self.max_wait_steps, bool)
                or self.max_wait_steps < 1):
            raise ValueError(f"max_wait_steps must be an int >= 1, got {self.max_wait_steps!r}")


class Status(enum.Enum):
    WAITING = "waiting"    # not in the cache: new, or preempted for recompute
    RUNNING = "running"
    SWAPPED = "swapped"    # in the host tier
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One sample of a request, as the scheduler tracks it.

    Attributes
    ----------
    seq_id : int
        Its id in the PagedKvCache.
    request : Request
    sample_index : int
        In ``[0, request.n)``; sample i's first token is the i-th most likely one.
    tokens : list of int
        Prompt, then the generated tokens; the last one may not have been run yet.
    num_cached : int
        Tokens the cache holds for it (0 while waiting).
    num_computed : int
        Leading tokens whose K/V is written (a prefix hit counts).
    logits : list of np.ndarray, each [vocab_size] float32
        With ``record_logits``: the logits each generated token was chosen from, in order.
    waiting_since : int
        The step it last entered the waiting queue (arrival, or preemption for recompute).
    preempted : bool
        Preempted for recompute at least once (such sequences are admitted first).
    first_token_step : int or None
        The step its first token was sampled in.
    """

    seq_id: int
    request: Request
    sample_index: int
    tokens: list[int]
    status: Status = Status.WAITING
    num_cached: int = 0
    num_computed: int = 0
    logits: list[np.ndarray] = field(default_factory=list)
    waiting_since: int = 0
    preempted: bool = False
    first_token_step: Optional[int] = None

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - len(self.request.prompt)

    @property
    def generated(self) -> np.ndarray:
        """The generated tokens, [num_generated] int32."""
        return np.asarray(self.tokens[len(self.request.prompt):], dtype=np.int32)


@dataclass(frozen=True)
class StepRecord:
    """What one step did and the cache's state after it."""

    step: int
    decode_tokens: int
    prefill_tokens: int
    running: int
    swapped: int
    waiting: int
    blocks_held: int    # device blocks held by sequences
    blocks_cached: int  # evictable blocks kept for the prefix cache
    prefix_hit_rate: float  # cumulative, over tokens looked up


class Scheduler:
    """Drives a workload to completion over one PagedKvCache.

    Parameters
    ----------
    model : StepModel
    cache : PagedKvCache
        Its geometry must match the model (layers, KV heads, head_dim); prefix caching is used
        when the cache enables it; swapping needs ``num_host_blocks > 0``.
    workload : RequestSource
    config : SchedulerConfig

    Raises
    ------
    ValueError
        When the cache does not fit the model or cannot hold the workload's longest sample.
    """

    def __init__(self, model: StepModel, cache: fkv.PagedKvCache, workload: RequestSource,
                 config: SchedulerConfig = SchedulerConfig()) -> None:
        m, c = model.config, cache.config
        if (m.num_layers, m.num_kv_heads, m.head_dim) != (c.num_layers, c.num_kv_heads, c.head_dim):
            raise ValueError(
                f"cache geometry (layers, kv heads, head_dim) = "
                f"{(c.num_layers, c.num_kv_heads, c.head_dim)} does not match the model's "
                f"{(m.num_layers, m.num_kv_heads, m.head_dim)}")
        longest = workload.max_request_tokens
        if -(-longest // c.block_size) > c.num_blocks:
            raise ValueError(
                f"the cache is too small for the workload: its longest request may reach {longest} "
                f"tokens = {-(-longest // c.block_size)} blocks of {c.block_size}, but the cache "
                f"has {c.num_blocks} blocks")
        if longest > m.max_positions:
            raise ValueError(f"the workload's longest request may reach {longest} tokens, beyond "
                             f"the model's max_positions ({m.max_positions})")
        self.model, self.cache, self.workload, self.config = model, cache, workload, config
        self.step_no = 0
        self.running: list[Sequence] = []   # admission order: the last is preempted first
        self.swapped: deque[Sequence] = deque()
        self.waiting: deque[Sequence] = deque()
        self.finished: list[Sequence] = []
        self.history: list[StepRecord] = []
        self.preemptions_by_swap = 0
        self.preemptions_by_recompute = 0
        self.computed_tokens = 0   # rows run through the model (recomputation included)
        self.whole_prompt_hits = 0  # requests admitted with nothing to prefill
        self.shared_in_step_tokens = 0  # prompt tokens shared from a chunk of the same step
        self._forks_in_step: list[tuple[Sequence, int]] = []  # (sequence, tokens shared)
        self.requests_finished = 0
        self._next_seq_id = 0
        self._unfinished_samples: dict[int, list[Sequence]] = {}  # request id -> its samples

    @property
    def done(self) -> bool:
        return self.workload.done and not (self.running or self.swapped or self.waiting)

    @property
    def preemptions(self) -> int:
        return self.preemptions_by_swap + self.preemptions_by_recompute

    def run(self) -> None:
        """Step until every request of the workload is finished."""
        while not self.done:
            self.step()

    def step(self) -> StepRecord:
        """Schedule and run one step (see the module docstring); returns its record."""
        for request in self.workload.arrivals(self.step_no):
            self._unfinished_samples[request.request_id] = [self._new_sequence(request, 0)]
            self.waiting.append(self._unfinished_samples[request.request_id][0])
        budget = self.config.token_budget
        self._forks_in_step.clear()
        decode, preempted = self._schedule_decodes(budget)
        budget -= len(decode)
        chunks = []  # (sequence, start, end)
        decoding = set(decode)
        for seq in self.running:
            if budget and seq.num_computed < seq.num_cached and seq not in decoding:
                chunks.append(self._chunk(seq, budget))
                budget -= chunks[-1][2] - chunks[-1][1]
        if not preempted:
            self._swap_in()
            budget = self._admit_waiting(budget, decoding, chunks)
        if decode or chunks:
            self._run_model(decode, chunks)
        elif not (preempted or self.running or self.swapped):
            if self.waiting:  # excluded by the size check in __init__
                raise RuntimeError("scheduler stalled: a waiting sequence does not fit the empty "
                                   "cache")
            # Idle until the next arrival: jump the clock there.
            self.step_no = max(self.step_no, self.workload.next_arrival_step() - 1)
        record = self._record(len(decode), sum(end - start for _, start, end in chunks))
        self.step_no += 1
        return record

    def _new_sequence(self, request: Request, sample_index: int) -> Sequence:
        seq = Sequence(seq_id=self._next_seq_id, request=request, sample_index=sample_index,
                       tokens=request.prompt.tolist(), waiting_since=self.step_no)
        self._next_seq_id += 1
        return seq

    def _schedule_decodes(self, budget: int) -> tuple[list[Sequence], bool]:
        """Append the pending token of up to ``budget`` decoding sequences, preempting from the
        back of the running list until the batch fits. Returns (the batch, whether preempted)."""
        decode = [s for s in self.running if s.num_cached < len(s.tokens)][:budget]
        preempted = False
        while decode:
            try:
                self.cache.append_batch([s.seq_id for s in decode], [s.tokens[-1] for s in decode])
                break
            except fkv.OutOfBlocksError:
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim in decode:
                    decode.remove(victim)
        for seq in decode:
            seq.num_cached += 1
        return decode, preempted

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        try:
            self.cache.swap_out(seq.seq_id)
        except fkv.OutOfBlocksError:  # no host tier, or it is full: recompute later
            self.cache.free_sequence(seq.seq_id)
            seq.status, seq.num_cached, seq.num_computed = Status.WAITING, 0, 0
            seq.waiting_since, seq.preempted = self.step_no, True
            self.waiting.appendleft(seq)
            self.preemptions_by_recompute += 1
        else:
            seq.status = Status.SWAPPED
            self.swapped.append(seq)
            self.preemptions_by_swap += 1

    def _room_for(self, num_tokens: int) -> bool:
        """Whether ``num_tokens`` more tokens fit in free (or evictable) blocks with the
        watermark left over (no watermark when nothing runs)."""
        reserve = self.config.watermark_blocks * self.cache.config.block_size if self.running else 0
        return self.cache.can_allocate(num_tokens + reserve)

    def _swap_in(self) -> None:
        while (self.swapped and len(self.running) < self.config.max_num_seqs
               and self._room_for(self.swapped[0].num_cached)):
            seq = self.swapped.popleft()
            self.cache.swap_in(seq.seq_id)
            seq.status = Status.RUNNING
            self.running.append(seq)

    @property
    def _keeps_prompt_logits(self) -> bool:
        return self.cache.config.max_prompt_logits > 0

    def _admit(self, seq: Sequence, shared_from: Optional[tuple[Sequence, int]] = None) -> bool:
        """Add a waiting sequence to the cache if the limits allow: the watermark is free and
        the blocks it needs beyond its prefix hit are available (add_sequence is all-or-nothing).
        A whole-prompt hit is sampled right away from the stored logits. With ``shared_from``
        (other, n): a fork of other's first n tokens (full blocks), which other's chunk computes
        in this step, plus its own tokens; its computed count is n for the scheduler (the
        cache's follows with this step's marks)."""
        if len(self.running) >= self.config.max_num_seqs or not self._room_for(0):
            return False
        tokens = np.asarray(seq.tokens, np.int32)
        logits = None
        try:
            if shared_from is not None:
                hit = self._fork_shared(seq, *shared_from)
            elif self._keeps_prompt_logits and seq.num_generated == 0:
                hit, logits = self.cache.add_sequence_with_logits(seq.seq_id, tokens)
            else:
                hit = self.cache.add_sequence(seq.seq_id, tokens)
        except fkv.OutOfBlocksError:
            return False
        seq.num_computed = hit
        seq.num_cached = len(seq.tokens)
        seq.status = Status.RUNNING
        self.running.append(seq)
        if logits is not None:
            self.whole_prompt_hits += 1
            self._sample(seq, logits)
        return True

    def _admit_waiting(self, budget: int, decoding: set[Sequence],
                       chunks: list[tuple[Sequence, int, int]]) -> int:
        """Admit waiting sequences in ``_admission_queue`` order while the budget and ``_admit``
        allow, each with a first chunk appended to ``chunks``; returns the budget left. With
        ``wait_for_shared_prefix``, a sequence whose prompt shares full blocks that a running
        sequence is still prefilling is admitted sharing them when that sequence's chunk in
        ``chunks`` computes them (``share_prefix_in_step``), else stays waiting (keeping its
        place) while later ones are considered; it is admitted once those blocks are computed,
        and hits them."""
        if not budget:
            return budget
        for seq in self._admission_queue():
            if not budget:
                break
            sharer = self._uncomputed_prefix_holder(seq, decoding)
            if sharer is not None and not (self.config.share_prefix_in_step
                                           and _computes_in_step(*sharer, chunks)):
                continue  # waits for the blocks to be computed
            if not self._admit(seq, sharer):
                break
            self.waiting.remove(seq)
            if seq.num_computed < seq.num_cached:  # else a whole-prompt hit, sampled already
                chunks.append(self._chunk(seq, budget))
                budget -= chunks[-1][2] - chunks[-1][1]
        return budget

    def _admission_queue(self) -> list[Sequence]:
        """The waiting sequences in the order ``admission_order`` considers them. ``waiting``
        itself stays in arrival order (preempted-for-recompute sequences at its front).

        "shortest_prefill" sorts (stably, so ties keep arrival order) on: preempted first, then
        those that have waited ``max_wait_steps`` steps (oldest first), then the rest by the
        tokens each has to compute now. Cost: one ``cached_prefix_len`` (a hash per full
        prompt block, read-only) per waiting sequence that is neither preempted nor aged."""
        if self.config.admission_order == "fcfs" or len(self.waiting) < 2:
            return list(self.waiting)
        aged_since = self.step_no - self.config.max_wait_steps
        lookup = self.cache.config.enable_prefix_caching

        def key(seq: Sequence) -> tuple[int, int]:
            if seq.preempted:
                return 0, 0
            if seq.waiting_since <= aged_since:
                return 1, seq.waiting_since
            hit = self.cache.cached_prefix_len(np.asarray(seq.tokens, np.int32)) if lookup else 0
            return 2, len(seq.tokens) - hit

        return sorted(self.waiting, key=key)

    def _uncomputed_prefix_holder(self, seq: Sequence,
                                  decoding: set[Sequence]) -> Optional[tuple[Sequence, int]]:
        """The running sequence still prefilling (not a decode row) that holds, uncomputed, the
        most full blocks of ``seq``'s leading tokens that ``add_sequence`` would reuse once
        computed, and how many tokens those full blocks cover; None if there is none (or without
        ``wait_for_shared_prefix`` and prefix caching).

        Cost: one comparison of token prefixes per sequence still prefilling."""
        if not (self.config.wait_for_shared_prefix and self.cache.config.enable_prefix_caching):
            return None
        block = self.cache.config.block_size
        tokens = np.asarray(seq.tokens[:len(seq.tokens) - 1], np.int64)  # never a whole-prompt hit
        holder = None
        for other in self.running:
            if other in decoding or other.num_computed >= other.num_cached:
                continue
            shared = _common_prefix_len(tokens, np.asarray(other.tokens[:other.num_cached]))
            shared -= shared % block
            if shared // block > other.num_computed // block and (holder is None
                                                                   or shared > holder[1]):
                holder = other, shared
        return holder

    def _fork_shared(self, seq: Sequence, other: Sequence, shared: int) -> int:
        """Creates ``seq`` in the cache as a fork of ``other``'s first ``shared`` tokens plus its
        own (all-or-nothing: OutOfBlocksError leaves the cache as it was); returns ``shared``."""
        self.cache.fork(other.seq_id, seq.seq_id, num_tokens=shared)
        try:
            self.cache.append_tokens(seq.seq_id, np.asarray(seq.tokens[shared:], np.int32))
        except fkv.OutOfBlocksError:
            self.cache.free_sequence(seq.seq_id)
            raise
        self.shared_in_step_tokens += shared
        self._forks_in_step.append((seq, shared))
        return shared

    def _undo_forks_in_step(self) -> None:
        """After a step's forward pass failed: the sequences admitted this step as forks of a
        prefix it was to compute go back to the front of the waiting queue (in their order),
        since their counts assumed the pass; every other sequence's count is still the cache's."""
        for seq, shared in reversed(self._forks_in_step):
            self.cache.free_sequence(seq.seq_id)
            self.running.remove(seq)
            seq.status, seq.num_cached, seq.num_computed = Status.WAITING, 0, 0
            self.waiting.appendleft(seq)
            self.shared_in_step_tokens -= shared
        self._forks_in_step.clear()

    @staticmethod
    def _chunk(seq: Sequence, budget: int) -> tuple[Sequence, int, int]:
        return seq, seq.num_computed, min(seq.num_cached, seq.num_computed + budget)

    def _run_model(self, decode: list[Sequence], chunks: list[tuple[Sequence, int, int]]) -> None:
        rows = [(seq, seq.num_computed, seq.num_cached) for seq in decode] + chunks
        tokens = np.concatenate([np.asarray(seq.tokens[start:end], np.int32)
                                 for seq, start, end in rows])
        positions = np.concatenate([np.arange(start, end) for _, start, end in rows])
        try:
            attention = PagedStepAttention(self.cache, [s.seq_id for s in decode],
                                           [s.seq_id for s, _, _ in chunks],
                                           [start for _, start, _ in chunks],
                                           [end for _, _, end in chunks],
                                           precision=self.config.attention_precision)
            hidden = self.model.forward(tokens, positions, attention)
        except BaseException:
            self._undo_forks_in_step()
            raise
        self.computed_tokens += len(tokens)
        for seq, _, end in rows:
            seq.num_computed = end
        self.cache.mark_computed_batch([s.seq_id for s, _, _ in rows], [end for _, _, end in rows])
        last_rows = np.cumsum([end - start for _, start, end in rows]) - 1
        sampling = [(seq, row) for (seq, _, end), row in zip(rows, last_rows) if end == len(seq.tokens)]
        if sampling:
            logits = self.model.logits(hidden[[row for _, row in sampling]])
            for (seq, _), seq_logits in zip(sampling, logits):
                if self._keeps_prompt_logits and seq.num_generated == 0:
                    try:  # for a resent request; an optimisation, skipped without room
                        self.cache.store_logits(seq.seq_id, seq_logits)
                    except fkv.OutOfBlocksError:
                        pass
                self._sample(seq, seq_logits)

    def _sample(self, seq: Sequence, logits: np.ndarray) -> None:
        """Greedy sampling; forks the other samples of an ``n > 1`` request off its prompt."""
        samples = [seq]
        if seq.request.n > 1 and seq.num_generated == 0:
            for index in range(1, seq.request.n):
                child = self._new_sequence(seq.request, index)
                self.cache.fork(seq.seq_id, child.seq_id)
                child.status, child.num_cached, child.num_computed = (
                    Status.RUNNING, seq.num_cached, seq.num_computed)
                self.running.append(child)
                self._unfinished_samples[seq.request.request_id].append(child)
                samples.append(child)
        for sample in samples:
            if sample.num_generated == 0:
                sample.first_token_step = self.step_no
            token = rank_token(logits, sample.sample_index if sample.num_generated == 0 else 0)
            sample.tokens.append(token)
            if self.config.record_logits:
                sample.logits.append(logits)
            if (sample.num_generated == sample.request.max_new_tokens
                    or token == sample.request.stop_token):
                self._finish(sample)

    def _finish(self, seq: Sequence) -> None:
        self.cache.free_sequence(seq.seq_id)
        self.running.remove(seq)
        seq.status = Status.FINISHED
        self.finished.append(seq)
        samples = self._unfinished_samples[seq.request.request_id]
        if all(s.status is Status.FINISHED for s in samples):
            del self._unfinished_samples[seq.request.request_id]
            self.requests_finished += 1
            self.workload.finished(seq.request, samples[0].generated, self.step_no)

    def _record(self, decode_tokens: int, prefill_tokens: int) -> StepRecord:
        stats = self.cache.stats()
        record = StepRecord(
            step=self.step_no, decode_tokens=decode_tokens, prefill_tokens=prefill_tokens,
            running=len(self.running), swapped=len(self.swapped), waiting=len(self.waiting),
            blocks_held=stats["used_blocks"] - stats["evictable_blocks"],
            blocks_cached=stats["evictable_blocks"],
            prefix_hit_rate=stats["prefix_hit_tokens"] / max(stats["prefix_query_tokens"], 1))
        self.history.append(record)
        return record


def _computes_in_step(seq: Sequence, num_tokens: int,
                      chunks: list[tuple[Sequence, int, int]]) -> bool:
    """Whether this step's ``chunks`` take ``seq`` to at least ``num_tokens`` computed tokens."""
    return any(chunk_seq is seq and end >= num_tokens for chunk_seq, _, end in chunks)


def _common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """The number of leading elements two 1-D arrays share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def rank_token(logits: np.ndarray, rank: int) -> int:
    """The ``rank``-th most likely token (0: the greedy choice; ties go to the lower id).

    logits : [vocab_size] float.
    """
    if rank == 0:
        return int(np.argmax(logits))
    return int(np.argsort(-logits, kind="stable")[rank])
