"""Model geometries of the demo decoder (named presets; the weights are random, see model.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Geometry of a Llama-style decoder.

    Attributes
    ----------
    vocab_size : int
        Token ids are in ``[0, vocab_size)``; the output head is tied to the embedding.
    hidden_size : int
    num_layers : int
    num_q_heads : int
        A multiple of ``num_kv_heads`` (grouped-query attention).
    num_kv_heads : int
    head_dim : int
    ffn_size : int
        Width of the SwiGLU MLP.
    rope_theta : float
        Base of the rotary position embedding frequencies.
    max_positions : int
        Longest sequence the rotary tables cover.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    rope_theta: float = 10000.0
    max_positions: int = 8192

    def __post_init__(self) -> None:
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")


MODEL_PRESETS: dict[str, ModelConfig] = {
    # For tests: a few milliseconds per step.
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_q_heads=4,
                        num_kv_heads=2, head_dim=16, ffn_size=128),
    "small": ModelConfig(vocab_size=2048, hidden_size=256, num_layers=4, num_q_heads=8,
                         num_kv_heads=2, head_dim=32, ffn_size=688),
    # The demo's default: big enough that the kernels and the cache do real work.
    "base": ModelConfig(vocab_size=8192, hidden_size=512, num_layers=8, num_q_heads=8,
                        num_kv_heads=4, head_dim=64, ffn_size=1376),
}


# Small random transformers models of these architectures (ferrum_kv.demo.hf; the "small"
# geometry), served through ferrum_kv.integrations.transformers. Needs torch and transformers.
HF_MODEL_PRESETS: tuple[str, ...] = ("hf:llama", "hf:mistral", "hf:qwen2")
