"""``Engine``: continuous batching of a transformers causal LM over a PagedKvCache.

The engine is the demo's scheduler (``ferrum_kv.demo.scheduler.Scheduler``: continuous batching,
chunked prefill under a token budget, prefix caching, preemption by swap or recompute, forks for
``n > 1``) driving a transformers model instead of the demo's NumPy decoder:

- ``TransformersStepModel`` runs a step's rows *packed* (``input_ids`` [1, T] of several
  sequences, each with its own ``position_ids``; no padding) through the model's base module with
  the "ferrum" attention, which hands each layer's q, k, v to the step's ``PagedStepAttention``
  (write K/V, then paged decode / prefill kernels), with the model's scale, sliding window and
  soft cap; logits come from the output embeddings, for the sampled rows only.
- ``PromptRequests`` is the request source: the prompts of one ``generate`` call, all arriving
  at once.

Sampling is greedy (the scheduler's). Works for causal LMs whose attention layers call
transformers' attention interface and whose base module takes ``input_ids`` and
``position_ids`` (Llama, Mistral, Qwen2, Gemma2, ...); logits are the output embeddings applied
to the final hidden state (with Gemma2's final soft cap), not a model-specific head.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

import ferrum_kv as fkv
from ferrum_kv.demo.paged import PagedStepAttention
from ferrum_kv.demo.scheduler import Scheduler, SchedulerConfig
from ferrum_kv.demo.workload import Request
from ferrum_kv.integrations.transformers import _attention
from ferrum_kv.integrations.transformers._model import (
    check_attention, config_for, geometry, kernel_threads, rows, unpack)


@dataclass(frozen=True)
class _PackedStep:
    """The "ferrum" attention's step for one packed scheduler step (batch of one row)."""

    attention: PagedStepAttention

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
               scale: Optional[float], sliding_window: Optional[int],
               soft_cap: Optional[float]) -> torch.Tensor:
        out = self.attention(layer, rows(query, None), rows(key, None), rows(value, None),
                             scale=scale, sliding_window=sliding_window, soft_cap=soft_cap,
                             num_threads=kernel_threads())
        return unpack(out, query, None)


class TransformersStepModel:
    """A transformers causal LM as the scheduler's ``StepModel``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Its attention implementation must be "ferrum" when ``forward`` runs.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = geometry(model)
        self._base = model.base_model
        self._head = model.get_output_embeddings()
        self._final_cap = getattr(model.config.get_text_config(decoder=True),
                                  "final_logit_softcapping", None)

    def forward(self, tokens: np.ndarray, positions: np.ndarray,
                attention: PagedStepAttention) -> torch.Tensor:
        """tokens, positions: [T] int -> final hidden states [T, hidden] (model dtype)."""
        check_attention(self.model)
        ids = torch.from_numpy(np.asarray(tokens, np.int64))[None]
        pos = torch.from_numpy(np.asarray(positions, np.int64))[None]
        with torch.inference_mode(), _attention.active(_PackedStep(attention)):
            return self._base(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state[0]

    def logits(self, hidden: torch.Tensor) -> np.ndarray:
        """[R, hidden] -> [R, vocab_size] float32."""
        with torch.inference_mode():
            logits = self._head(hidden).float()
            if self._final_cap:
                logits = torch.tanh(logits / self._final_cap) * self._final_cap
            return logits.numpy()


class PromptRequests:
    """The scheduler's ``RequestSource`` for one ``generate`` call: every prompt arrives at step 0;
    replies are kept by prompt index.

    Parameters
    ----------
    prompts : sequence of sequences of int
    max_new_tokens : int
    stop_token : int, optional
    """

    def __init__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 stop_token: Optional[int]) -> None:
        self.requests = [
            Request(request_id=i, prompt=np.asarray(p, np.int32), max_new_tokens=max_new_tokens,
                    n=1, arrival_step=0, session=i, turn=0, stop_token=stop_token)
            for i, p in enumerate(prompts)]
        self._pending = deque(self.requests)
        self.replies: dict[int, list[int]] = {}

    @property
    def done(self) -> bool:
        return not self._pending

    @property
    def max_request_tokens(self) -> int:
        return max(len(r.prompt) + r.max_new_tokens for r in self.requests)

    def next_arrival_step(self) -> Optional[int]:
        return 0 if self._pending else None

    def arrivals(self, step: int) -> list[Request]:
        arrived = list(self._pending)
        self._pending.clear()
        return arrived

    def finished(self, request: Request, reply: np.ndarray, step: int) -> None:
        self.replies[request.request_id] = np.asarray(reply).tolist()


@contextlib.contextmanager
def _freeing_on_exit(scheduler: Scheduler) -> Iterator[None]:
    """Free the sequences a scheduler still holds when the block ends early (an error, or a
    stream its consumer stopped reading)."""
    try:
        yield
    finally:
        for seq in [*scheduler.running, *scheduler.swapped]:
            scheduler.cache.free_sequence(seq.seq_id)


class Engine:
    """Continuous-batching greedy generation for a transformers causal LM (module docstring).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Switched to the "ferrum" attention implementation by the engine.
    num_blocks : int
        Device blocks of the engine's PagedKvCache.
    dtype : str
        K/V storage dtype: "float32", "float16" or "bfloat16".
    block_size : int
    num_host_blocks : int
        Host-tier blocks: preempted sequences are swapped there while it has room, else
        recomputed later (0: always recompute).
    enable_prefix_caching : bool
        On by default: prompts sharing a prefix (a system prompt) prefill it once.
    token_budget : int
        Rows (decode tokens plus prefill chunk tokens) per step: longer prompts are prefilled in
        chunks.
    max_num_seqs : int
        Running sequences at most.
    admission_order : str
        "shortest_prefill" (default): waiting prompts are admitted in order of the tokens each
        still has to prefill (its length minus its prefix-cache hit), which lowers the mean time
        to first token; "fcfs": in the order given. ``SchedulerConfig.admission_order``.
    max_wait_steps : int
        With "shortest_prefill", a prompt that has waited this many steps goes first
        (``SchedulerConfig.max_wait_steps``).

    Attributes
    ----------
    cache : PagedKvCache
    model : the transformers model
    scheduler_config : SchedulerConfig
        The scheduler's limits, read by each ``generate`` / ``stream`` call (replace it, e.g.
        with ``dataclasses.replace``, to change them: ``wait_for_shared_prefix`` and the rest).

    Raises
    ------
    ValueError
        A bad size, dtype or admission order (``CacheConfig``, ``SchedulerConfig``); the model
        is left as it was.
    """

    def __init__(self, model: torch.nn.Module, num_blocks: int, dtype: str = "float32", *,
                 block_size: int = 16, num_host_blocks: int = 0,
                 enable_prefix_caching: bool = True, token_budget: int = 512,
                 max_num_seqs: int = 64,
                 admission_order: str = "shortest_prefill",
                 max_wait_steps: int = SchedulerConfig.max_wait_steps) -> None:
        self.model = model
        self.cache = fkv.PagedKvCache(config_for(
            model, num_blocks, dtype, block_size=block_size,
            enable_prefix_caching=enable_prefix_caching, num_host_blocks=num_host_blocks))
        self.scheduler_config = SchedulerConfig(
            token_budget=token_budget, max_num_seqs=max_num_seqs,
            admission_order=admission_order, max_wait_steps=max_wait_steps)
        model.set_attn_implementation(_attention.NAME)
        self._step_model = TransformersStepModel(model)
        self.last_scheduler: Optional[Scheduler] = None

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 32, *,
               stop_token_id: Optional[int] = None,
               progress: Optional[bool] = False) -> Iterator[tuple[int, int]]:
        """Generate greedily for every prompt, yielding ``(prompt index, token id)`` as soon as
        each token is sampled (tokens of one prompt in order; prompts interleaved).

        Parameters
        ----------
        prompts : sequence of sequences of int
            Token ids, at least one per prompt.
        max_new_tokens : int
            Tokens per prompt at most (>= 1).
        stop_token_id : int, optional
            A prompt stops after generating this token (included); None: never.
        progress : bool, optional
            A tqdm bar of finished prompts on stderr; None: when stderr is a terminal.

        Raises
        ------
        ValueError
            No prompts, an empty prompt, a negative token id, max_new_tokens < 1, or a prompt
            that cannot fit the cache or the model's positions.
        """
        if not len(prompts):
            raise ValueError("generate needs at least one prompt")
        for i, prompt in enumerate(prompts):
            if not len(prompt) or min(prompt) < 0:
                raise ValueError(f"prompt {i} must be non-empty token ids >= 0, got {list(prompt)[:8]}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        source = PromptRequests(prompts, max_new_tokens, stop_token_id)
        scheduler = Scheduler(self._step_model, self.cache, source, self.scheduler_config)
        self.last_scheduler = scheduler
        emitted: dict[int, int] = {}  # sequence id -> tokens yielded
        finished_seen = 0
        with tqdm(total=len(prompts), desc="generating", unit="prompt", leave=False,
                  disable=None if progress is None else not progress) as bar, \
                _freeing_on_exit(scheduler):
            while not scheduler.done:
                scheduler.step()
                newly_finished = scheduler.finished[finished_seen:]
                finished_seen = len(scheduler.finished)
                for seq in [*scheduler.running, *newly_finished]:
                    start = emitted.get(seq.seq_id, 0)
                    for token in seq.tokens[len(seq.request.prompt) + start:]:
                        yield seq.request.request_id, token
                    emitted[seq.seq_id] = seq.num_generated
                bar.update(len(newly_finished))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 32, *,
                 stop_token_id: Optional[int] = None,
                 on_token: Optional[Callable[[int, int], None]] = None,
                 progress: Optional[bool] = False) -> list[list[int]]:
        """The generated token ids of every prompt (``stream``'s arguments and errors);
        ``on_token(prompt index, token id)`` is called for each token as it is sampled."""
        replies: list[list[int]] = [[] for _ in prompts]
        for index, token in self.stream(prompts, max_new_tokens, stop_token_id=stop_token_id,
                                        progress=progress):
            replies[index].append(token)
            if on_token is not None:
                on_token(index, token)
        return replies
