"""The demo on a transformers model (``ferrum-kv demo --model hf:llama|mistral|qwen2``): a small
random model of that architecture, served through ``ferrum_kv.integrations.transformers``
(the same scheduler as the NumPy decoder), verified against transformers' own ``generate``.

Imports torch and transformers (the ``hf`` extra); ``ferrum_kv.demo`` imports this module only
for an ``hf:`` model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import transformers

from ferrum_kv.integrations.transformers.engine import TransformersStepModel

# The "small" NumPy preset's geometry (4 layers, 8 query / 2 KV heads of 32), per architecture.
_COMMON = dict(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
_CONFIGS = {
    "hf:llama": lambda: transformers.LlamaConfig(**_COMMON),
    # A window shorter than most of the workload's prompts (system prompts are 48-160 tokens).
    "hf:mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=64),
    "hf:qwen2": lambda: transformers.Qwen2Config(**_COMMON),  # q/k/v biases
}


def build_model(preset: str, seed: int) -> torch.nn.Module:
    """The random causal LM of ``preset`` (weights from ``seed``), float32, eval mode.

    Weights are drawn wider than transformers' initialiser (std 1.5 / sqrt(fan_in)), so the
    logits spread over a few units and greedy choices are rarely near-ties.
    """
    config = _CONFIGS[preset]()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def step_model(model: torch.nn.Module) -> TransformersStepModel:
    """``model`` as the scheduler's StepModel, switched to the "ferrum" attention."""
    model.set_attn_implementation("ferrum")
    return TransformersStepModel(model)


def reference_logits(model: torch.nn.Module) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """The ``--verify`` reference: transformers' own greedy ``generate`` (DynamicCache + SDPA)
    returning its logits. For a sample whose first token is the ``rank``-th most likely one
    (``n > 1``), that token is forced: the prompt's logits come from one ``generate`` step, the
    rest from ``generate`` over the prompt plus that token.

    Returns ``f(tokens [N], num_prompt, sample_index) -> [N - num_prompt, vocab] float32``.
    """

    def generate_logits(tokens: np.ndarray, count: int) -> list[np.ndarray]:
        model.set_attn_implementation("sdpa")
        try:
            ids = torch.from_numpy(np.asarray(tokens, np.int64))[None]
            with torch.no_grad():  # an explicit mask: token 0 (the pad id) is no padding here
                out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=count, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
        finally:
            model.set_attn_implementation("ferrum")
        return [row[0].float().numpy() for row in out.logits]

    def reference(tokens: np.ndarray, num_prompt: int, sample_index: int) -> np.ndarray:
        count = len(tokens) - num_prompt
        if sample_index == 0:
            return np.stack(generate_logits(tokens[:num_prompt], count))
        rows = generate_logits(tokens[:num_prompt], 1)
        if count > 1:
            rows += generate_logits(tokens[:num_prompt + 1], count - 1)
        return np.stack(rows)

    return reference
