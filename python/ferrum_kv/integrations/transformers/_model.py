"""What the integration needs to know about a transformers causal LM: its attention geometry,
the ``CacheConfig`` that fits it, and the conversions between its tensors and the kernels' arrays."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import ferrum_kv as fkv


@dataclass(frozen=True)
class Geometry:
    """A model's attention geometry (from its text config).

    Attributes
    ----------
    num_layers, num_q_heads, num_kv_heads, head_dim : int
    max_positions : int
        ``max_position_embeddings``: the longest sequence the model takes.
    vocab_size : int
    """

    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    vocab_size: int


def geometry(model: torch.nn.Module) -> Geometry:
    """The geometry of ``model`` (a transformers ``PreTrainedModel``).

    Raises
    ------
    TypeError
        ``model`` has no transformers config.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        raise TypeError(f"expected a transformers model, got {type(model).__name__}")
    c = config.get_text_config(decoder=True)
    num_q_heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // num_q_heads
    return Geometry(num_layers=c.num_hidden_layers, num_q_heads=num_q_heads,
                    num_kv_heads=getattr(c, "num_key_value_heads", None) or num_q_heads,
                    head_dim=head_dim, max_positions=c.max_position_embeddings,
                    vocab_size=c.vocab_size)


def config_for(model: torch.nn.Module, num_blocks: int, dtype: str = "float32", *,
               block_size: int = 16, enable_prefix_caching: bool = True,
               **options: object) -> fkv.CacheConfig:
    """The ``CacheConfig`` of a PagedKvCache for ``model``: its layers, KV heads and head size,
    ``num_blocks`` blocks of ``block_size`` tokens in ``dtype``; other ``CacheConfig`` options
    (``num_host_blocks``, ``eviction_policy``, ...) pass through."""
    g = geometry(model)
    return fkv.CacheConfig(num_layers=g.num_layers, num_kv_heads=g.num_kv_heads,
                           head_dim=g.head_dim, block_size=block_size, num_blocks=num_blocks,
                           dtype=dtype, enable_prefix_caching=enable_prefix_caching, **options)


def check_fits(model: torch.nn.Module, cache: fkv.PagedKvCache) -> Geometry:
    """The model's geometry; ValueError when the cache's layers, KV heads or head size differ."""
    g, c = geometry(model), cache.config
    if (g.num_layers, g.num_kv_heads, g.head_dim) != (c.num_layers, c.num_kv_heads, c.head_dim):
        raise ValueError(
            f"the cache's (layers, kv heads, head_dim) = {(c.num_layers, c.num_kv_heads, c.head_dim)} "
            f"do not match the model's {(g.num_layers, g.num_kv_heads, g.head_dim)}")
    return g


def check_attention(model: torch.nn.Module) -> None:
    """RuntimeError unless the model runs the "ferrum" attention implementation."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "ferrum":
        raise RuntimeError(
            f"the model's attention implementation is {implementation!r}: call "
            f"model.set_attn_implementation('ferrum') before using ferrum_kv's cache with it")


def namespace(model: torch.nn.Module) -> bytes:
    """The prefix-cache namespace of ``model``'s K/V: fixed for the model object's lifetime, never
    shared with another model object (K/V of the same tokens differs between models)."""
    tag = getattr(model, "_ferrum_namespace", None)
    if tag is None:
        tag = b"transformers/" + type(model).__name__.encode() + b"/" + os.urandom(8).hex().encode()
        model._ferrum_namespace = tag
    return tag


def kernel_threads() -> int:
    """Threads for ferrum_kv's kernels inside a torch forward pass: the CPUs that torch's other
    intra-op threads leave free (``fkv.get_num_threads()`` minus ``torch.get_num_threads() - 1``),
    at least one.

    torch's OpenMP workers keep spinning on their cores for a while after each operation; a kernel
    thread placed on such a core waits for that spin to end, and the whole call waits for its
    slowest thread. So with torch using every core the kernels run on the calling thread alone
    (measured in BENCHMARKS.md, "transformers"). Lower ``torch.set_num_threads`` to give the
    kernels more.
    """
    return max(1, fkv.get_num_threads() - (torch.get_num_threads() - 1))


def rows(t: torch.Tensor, index: Optional[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """[B, H, T, D] tensor -> [N, H, D] float32 C-contiguous array of its (batch, column) pairs in
    ``index`` (two int64 tensors), or of every column of every row (N = B * T) when None. Shares
    memory with ``t`` when that needs no copy."""
    t = t.detach().transpose(1, 2)  # [B, T, H, D]
    t = t.reshape(-1, t.shape[2], t.shape[3]) if index is None else t[index]
    return t.to(torch.float32).contiguous().numpy()


def unpack(out: np.ndarray, query: torch.Tensor,
           index: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The kernels' [N, Hq, D] float32 output as the attention result [B, T, Hq, D] in the query's
    dtype; positions outside ``index`` (pads) are zero."""
    b, h, t, d = query.shape
    packed = torch.from_numpy(out)
    if index is None:
        return packed.view(b, t, h, d).to(query.dtype)
    full = torch.zeros((b, t, h, d), dtype=query.dtype)
    full[index] = packed.to(query.dtype)
    return full
