"""Tiny random transformers models for the integration tests (no downloads: built from configs,
weights from a fixed torch seed). Each is small enough that a generate call takes milliseconds."""

from __future__ import annotations

import importlib
import os

import pytest

VOCAB = 96


def require(*modules: str) -> None:
    """Skip the calling test module when torch / transformers are missing, unless
    FKV_REQUIRE_TORCH=1 (CI, which installs them): then the import error fails it."""
    for name in modules:
        if os.environ.get("FKV_REQUIRE_TORCH") == "1":
            importlib.import_module(name)
        else:
            pytest.importorskip(name)


def _build(architecture, **overrides):
    import torch

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=0, bos_token_id=1, eos_token_id=None)
    common.update(overrides)
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, f"{architecture}ForCausalLM")(
        getattr(transformers, f"{architecture}Config")(**common)).eval()
    # Wider random weights than the initialiser's: logits spread over a few units, so greedy
    # choices are rarely near-ties that rounding could flip.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


def llama():
    """Llama with grouped-query attention (4 query heads, 2 KV heads)."""
    return _build("Llama")


def qwen2():
    """Qwen2: biases on q/k/v."""
    return _build("Qwen2")


def mistral(sliding_window: int = 24):
    """Mistral with a sliding window (shorter than the tests' prompts)."""
    return _build("Mistral",
                  sliding_window=sliding_window)


def gemma2():
    """Gemma2: attention logit soft cap, alternating sliding-window layers."""
    return _build("Gemma2", head_dim=16,
                  attn_logit_softcapping=2.0, final_logit_softcapping=30.0, sliding_window=8,
                  query_pre_attn_scalar=16)


MODELS = {"llama": llama, "qwen2": qwen2, "mistral": mistral, "gemma2": gemma2}


def reference_implementation(model) -> str:
    """The attention transformers runs by default for the model: SDPA, eager where SDPA cannot
    (Gemma2's soft cap)."""
    return "sdpa" if model._supports_sdpa else "eager"
