"""Tiny random transformers models for the integration tests (no downloads: built from configs,
weights from a fixed torch seed). Each is small enough that a generate call takes milliseconds."""

from __future__ import annotations

import torch
import transformers

VOCAB = 96


def _build(config_class, model_class, **overrides):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=0, bos_token_id=1, eos_token_id=None)
    common.update(overrides)
    torch.manual_seed(0)
    model = model_class(config_class(**common)).eval()
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
    return _build(transformers.LlamaConfig, transformers.LlamaForCausalLM)


def qwen2():
    """Qwen2: biases on q/k/v."""
    return _build(transformers.Qwen2Config, transformers.Qwen2ForCausalLM)


def mistral(sliding_window: int = 24):
    """Mistral with a sliding window (shorter than the tests' prompts)."""
    return _build(transformers.MistralConfig, transformers.MistralForCausalLM,
                  sliding_window=sliding_window)


def gemma2():
    """Gemma2: attention logit soft cap, alternating sliding-window layers."""
    return _build(transformers.Gemma2Config, transformers.Gemma2ForCausalLM, head_dim=16,
                  attn_logit_softcapping=2.0, final_logit_softcapping=30.0, sliding_window=8,
                  query_pre_attn_scalar=16)


MODELS = {"llama": llama, "qwen2": qwen2, "mistral": mistral, "gemma2": gemma2}


def reference_implementation(model) -> str:
    """The attention transformers runs by default for the model: SDPA, eager where SDPA cannot
    (Gemma2's soft cap)."""
    return "sdpa" if model._supports_sdpa else "eager"
