"""The ``--verify`` reference: every sample again, alone, over a plain contiguous K/V cache.

The reference runs the same ``Decoder`` with a ``ContiguousAttention`` backend: per layer one
NumPy array of the sequence's K/V in token order (rounded to the storage dtype exactly as the
paged cache stores it) and a causal softmax attention in NumPy. It prefills the prompt in one go,
then feeds the tokens the serving run generated one at a time, and compares at every generated
token: the logits (relative error ``max|paged - ref| / max|ref|`` within the tolerance) and the
token (the one the serving run chose must be the reference's choice of the same rank). When the
reference's logit of the chosen token is within the tolerance of its own choice's, the two are
tied: reported, not a mismatch.

What the comparison covers: paging (block tables, slots), chunked prefill, batching, prefix-cache
hits, copy-on-write, swapping and recomputation all leave the numbers unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np

from ferrum_kv.demo.model import Decoder
from ferrum_kv.demo.scheduler import Sequence, rank_token
from ferrum_kv.reference import round_to_storage

DEFAULT_TOLERANCE = 1e-4
# The reference computes its own K/V (the whole prompt in one matmul, then token by token), which
# differ from the served run's (other batch shapes) by float32 rounding, ~1e-7. Rounded to the
# storage format, such a difference now and then lands on the other side of a rounding boundary:
# one element one quantization step away. A bfloat16 step (2^-8 relative) costs up to ~9e-5 in
# the logits; the quantized formats' steps (1/255 of a row's range for int8, 1/15 of a group's for
# int4, 2^-3 / 2^-2 relative for fp8) up to ~1e-3 (measured over `ferrum-kv demo --sessions 6`:
# int8 2.6e-4, int4 6.3e-4, fp8_e4m3 7.9e-4, fp8_e5m2 9.1e-4), far below a paging error (a wrong
# block or slot moves the logits by 1e-1 or more).
QUANTIZED_TOLERANCE = 5e-3
# "fast" attention rounds queries and weights to bfloat16: ~5e-3 in the attention outputs
# (tests/python/test_attention_fast.py), up to 6.6e-4 in the demo's logits (bfloat16 storage,
# `ferrum-kv demo --sessions 6`).
FAST_TOLERANCE = 1e-2


def default_tolerance(storage_dtype: str, precision: str = "exact") -> float:
    """The verification's relative logit tolerance for a storage dtype and attention precision
    (the reasons are in the comments above)."""
    if precision == "fast":
        return FAST_TOLERANCE
    if storage_dtype in ("float32", "float16", "bfloat16"):
        return DEFAULT_TOLERANCE
    return QUANTIZED_TOLERANCE


class ContiguousAttention:
    """One sequence's K/V in contiguous arrays, attention in NumPy (a ``KvAttention`` backend).

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
    capacity : int
        Most tokens the sequence will hold.
    storage_dtype : str
        K/V are rounded to this dtype ("float32" | "float16" | "bfloat16", or quantized per
        (token, KV head) row for "int8" | "fp8_e4m3" | "fp8" | "fp8_e5m2" | "int4", with
        ``ferrum_kv.reference.quantize`` then ``dequantize``) as the paged cache
        stores them, and read back as float32.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int,
                 storage_dtype: str) -> None:
        self._k = np.zeros((num_layers, capacity, num_kv_heads, head_dim), np.float32)
        self._v = np.zeros_like(self._k)
        self._lens = [0] * num_layers
        self._dtype = storage_dtype
        self._scale = 1.0 / np.sqrt(head_dim)

    def __call__(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """See ``KvAttention``: q [T, Hq, D], k, v [T, Hkv, D] float32 -> [T, Hq, D] float32."""
        start = self._lens[layer]
        end = start + len(q)
        self._k[layer, start:end] = round_to_storage(k, self._dtype)
        self._v[layer, start:end] = round_to_storage(v, self._dtype)
        self._lens[layer] = end
        num_q, num_kv = q.shape[1], k.shape[1]
        group = num_q // num_kv
        # [Hkv, G, T, D] x [Hkv, end, D] -> scores [Hkv, G, T, end]
        qg = q.reshape(len(q), num_kv, group, -1).transpose(1, 2, 0, 3)
        keys = self._k[layer, :end].transpose(1, 0, 2)
        values = self._v[layer, :end].transpose(1, 0, 2)
        scores = np.matmul(qg, keys[:, None].swapaxes(-1, -2)) * self._scale
        query_pos = np.arange(start, end)[:, None]
        scores[..., np.arange(end)[None, :] > query_pos] = -np.inf
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        out = np.matmul(weights, values[:, None])  # [Hkv, G, T, D]
        return np.ascontiguousarray(out.transpose(2, 0, 1, 3).reshape(q.shape), dtype=np.float32)


@dataclass(frozen=True)
class StepMismatch:
    """A generated token whose logits or choice differ between the serving run and the reference."""

    request_id: int
    sample_index: int
    position: int  # of the generated token in the sequence
    relative_error: float
    served_token: int
    reference_token: int


@dataclass
class VerifyReport:
    """Outcome of ``verify``.

    Attributes
    ----------
    samples, steps : int
        Samples checked and generated tokens compared.
    max_relative_error : float
        Largest ``max|paged - ref| / max|ref|`` over every compared step.
    ties : int
        Steps whose chosen token and the reference's were within the tolerance (not mismatches).
    mismatches : list of StepMismatch
    tolerance : float
    """

    tolerance: float
    samples: int = 0
    steps: int = 0
    max_relative_error: float = 0.0
    ties: int = 0
    mismatches: list[StepMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict:
        return {
            "ok": self.ok, "samples": self.samples, "steps": self.steps,
            "max_relative_error": self.max_relative_error, "ties": self.ties,
            "mismatches": len(self.mismatches), "tolerance": self.tolerance,
        }


def reference_logits(model: Decoder, tokens: np.ndarray, num_prompt: int,
                     storage_dtype: str) -> np.ndarray:
    """Logits of every generated position of one sequence, computed alone and contiguously.

    Parameters
    ----------
    model : Decoder
    tokens : np.ndarray, [N], int
        Prompt followed by the generated tokens.
    num_prompt : int
        Prompt length, in [1, N).
    storage_dtype : str
        The paged cache's storage dtype (the reference rounds its K/V the same way).

    Returns
    -------
    np.ndarray, [N - num_prompt, vocab_size], float32
        Row ``i``: the logits the token at position ``num_prompt + i`` is chosen from (the prompt
        in one prefill, then one decode step per fed token).
    """
    c = model.config
    kv = ContiguousAttention(c.num_layers, c.num_kv_heads, c.head_dim, len(tokens), storage_dtype)
    hidden = [model.forward(tokens[:num_prompt], np.arange(num_prompt), kv)[-1:]]
    for position in range(num_prompt, len(tokens) - 1):
        hidden.append(model.forward(tokens[position:position + 1], np.array([position]), kv))
    return model.logits(np.concatenate(hidden))


def verify(model: Decoder, samples: Iterable[Sequence], storage_dtype: str,
           tolerance: float = DEFAULT_TOLERANCE,
           progress: Optional[Callable[[], object]] = None,
           reference: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None
           ) -> VerifyReport:
    """Check every finished sample of a serving run (run with ``record_logits``) against the
    reference.

    Parameters
    ----------
    model : Decoder
    samples : iterable of Sequence
        Finished samples with their recorded logits.
    storage_dtype : str
    tolerance : float
        Relative logit tolerance.
    progress : callable, optional
        Called with no argument after each sample.
    reference : callable, optional
        ``reference(tokens [N], num_prompt, sample_index) -> [N - num_prompt, vocab]`` logits
        to compare with; default ``reference_logits`` of ``model`` (a transformers model's demo
        passes ``ferrum_kv.demo.hf.reference_logits``, and ``model`` is then unused).

    Returns
    -------
    VerifyReport
    """
    report = VerifyReport(tolerance=tolerance)
    for seq in samples:
        tokens = np.asarray(seq.tokens, np.int64)
        num_prompt = len(seq.request.prompt)
        if reference is None:
            expected = reference_logits(model, tokens, num_prompt, storage_dtype)
        else:
            expected = reference(tokens, num_prompt, seq.sample_index)
        if len(seq.logits) != len(expected):
            raise ValueError(f"sample {seq.request.request_id}/{seq.sample_index} recorded "
                             f"{len(seq.logits)} logit rows for {len(expected)} generated tokens "
                             f"(run the scheduler with record_logits=True)")
        for index, (served, ref) in enumerate(zip(seq.logits, expected)):
            scale = float(np.abs(ref).max())
            error = float(np.abs(served - ref).max()) / scale
            report.max_relative_error = max(report.max_relative_error, error)
            chosen = int(tokens[num_prompt + index])
            rank = seq.sample_index if index == 0 else 0
            reference_choice = rank_token(ref, rank)
            tied = abs(float(ref[chosen]) - float(ref[reference_choice])) <= tolerance * scale
            if chosen != reference_choice and tied:
                report.ties += 1
            if error > tolerance or (chosen != reference_choice and not tied):
                report.mismatches.append(StepMismatch(
                    seq.request.request_id, seq.sample_index, num_prompt + index, error, chosen,
                    reference_choice))
        report.samples += 1
        report.steps += len(expected)
        if progress is not None:
            progress()
    return report
