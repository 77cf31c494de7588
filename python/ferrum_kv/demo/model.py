"""A Llama-style decoder in NumPy with deterministic random weights.

Token embedding, RMSNorm, rotary position embeddings, grouped-query attention, SwiGLU MLP and an
output head tied to the embedding. The model never stores K/V itself: each layer hands its
``q, k, v`` to an *attention backend* (``KvAttention``), which keeps the K/V and attends. The
serving path passes a paged backend (``ferrum_kv.demo.paged``), the ``--verify`` reference a
contiguous one (``ferrum_kv.demo.reference``); everything else is this one code path.

All arithmetic is float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ferrum_kv.demo.presets import ModelConfig

_RMS_EPS = 1e-5


class KvAttention(Protocol):
    """Where a layer's K/V goes and how its attention is computed."""

    def __call__(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Store ``k, v`` of this step's tokens and attend causally.

        Parameters
        ----------
        layer : int
        q : np.ndarray, [T, num_q_heads, head_dim], float32, C-contiguous
            Rotated queries of the step's T tokens.
        k, v : np.ndarray, [T, num_kv_heads, head_dim], float32, C-contiguous
            Rotated keys and values of the same tokens.

        Returns
        -------
        np.ndarray, [T, num_q_heads, head_dim], float32
        """


@dataclass(frozen=True)
class _LayerWeights:
    attn_norm: np.ndarray  # [hidden]
    wqkv: np.ndarray       # [hidden, (num_q_heads + 2 * num_kv_heads) * head_dim]
    wo: np.ndarray         # [num_q_heads * head_dim, hidden]
    mlp_norm: np.ndarray   # [hidden]
    w_gate_up: np.ndarray  # [hidden, 2 * ffn]
    w_down: np.ndarray     # [ffn, hidden]


def rms_norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """RMSNorm over the last axis: ``x / sqrt(mean(x**2) + eps) * weight``.

    x : [T, hidden] float32; weight : [hidden] float32. Returns [T, hidden] float32.
    """
    inv_rms = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + _RMS_EPS)
    return (x * inv_rms * weight).astype(np.float32, copy=False)


class Decoder:
    """The decoder: weights drawn from ``seed``, a forward pass over any KV backend.

    Parameters
    ----------
    config : ModelConfig
    seed : int
        Same seed, same weights (NumPy's PCG64).
    """

    def __init__(self, config: ModelConfig, seed: int = 0) -> None:
        self.config = config
        rng = np.random.default_rng(seed)
        c = config

        def dense(fan_in: int, fan_out: int) -> np.ndarray:
            return (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)

        def norm_weight() -> np.ndarray:
            return (1.0 + 0.1 * rng.standard_normal(c.hidden_size)).astype(np.float32)

        # Unit-variance rows: logits of the tied head then spread over a few units, so the top
        # two of a step are rarely within the verifier's tolerance of each other.
        self.embedding = rng.standard_normal((c.vocab_size, c.hidden_size)).astype(np.float32)
        qkv_width = (c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim
        self.layers = [
            _LayerWeights(
                attn_norm=norm_weight(),
                wqkv=dense(c.hidden_size, qkv_width),
                wo=dense(c.num_q_heads * c.head_dim, c.hidden_size),
                mlp_norm=norm_weight(),
                w_gate_up=dense(c.hidden_size, 2 * c.ffn_size),
                w_down=dense(c.ffn_size, c.hidden_size),
            )
            for _ in range(c.num_layers)
        ]
        self.final_norm = norm_weight()
        half = c.head_dim // 2
        inv_freq = c.rope_theta ** (-np.arange(half, dtype=np.float64) / half)
        angles = np.outer(np.arange(c.max_positions, dtype=np.float64), inv_freq)
        self._cos = np.cos(angles).astype(np.float32)  # [max_positions, head_dim / 2]
        self._sin = np.sin(angles).astype(np.float32)

    def forward(self, tokens: np.ndarray, positions: np.ndarray, attention: KvAttention) -> np.ndarray:
        """Run the step's tokens through every layer.

        Parameters
        ----------
        tokens : np.ndarray, [T], int
            Token ids (any mix of sequences; ``attention`` knows which row belongs where).
        positions : np.ndarray, [T], int
            Position of each token in its sequence (rotary embeddings).
        attention : KvAttention

        Returns
        -------
        np.ndarray, [T, hidden_size], float32
            The residual stream after the last layer (before the final norm).
        """
        c = self.config
        if positions.size and positions.max() >= c.max_positions:
            raise ValueError(f"position {int(positions.max())} beyond the model's "
                             f"max_positions ({c.max_positions})")
        n = len(tokens)
        q_width, kv_width = c.num_q_heads * c.head_dim, c.num_kv_heads * c.head_dim
        cos, sin = self._cos[positions][:, None, :], self._sin[positions][:, None, :]
        x = self.embedding[tokens]
        for layer, w in enumerate(self.layers):
            qkv = rms_norm(x, w.attn_norm) @ w.wqkv
            q = _rotate(qkv[:, :q_width].reshape(n, c.num_q_heads, c.head_dim), cos, sin)
            k = _rotate(qkv[:, q_width:q_width + kv_width].reshape(n, c.num_kv_heads, c.head_dim),
                        cos, sin)
            v = np.ascontiguousarray(qkv[:, q_width + kv_width:]).reshape(n, c.num_kv_heads, c.head_dim)
            x = x + attention(layer, q, k, v).reshape(n, q_width) @ w.wo
            gate, up = np.split(rms_norm(x, w.mlp_norm) @ w.w_gate_up, 2, axis=1)
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w.w_down  # SiLU(gate) * up
        return x

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """Output head (tied to the embedding).

        hidden : [R, hidden_size] float32 (rows of ``forward``'s result). Returns [R, vocab_size]
        float32.
        """
        return rms_norm(hidden, self.final_norm) @ self.embedding.T


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding, rotate-half convention (Llama): pairs (i, i + head_dim / 2).

    x : [T, heads, head_dim]; cos, sin : [T, 1, head_dim / 2]. Returns a new C-contiguous
    [T, heads, head_dim] float32 array.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
