"""The "ferrum" attention implementation and mask function of transformers.

Importing this module registers both under the name ``"ferrum"`` (``AttentionInterface`` and
``AttentionMaskInterface``). A model switched to it (``model.set_attn_implementation("ferrum")``)
hands every attention call to the *active step*: the object that knows, for the forward pass
under way, which cache sequences the rows belong to. ``FerrumCache`` activates one for each
forward of ``generate`` (a hook on the model), ``Engine`` for each of its scheduler steps.

The mask function returns None: padding, causality, sliding windows and soft caps are applied by
the paged kernels from the cache's block tables (pads are never stored), so no
``[batch, 1, query, key]`` mask is built.

Thread safety: the active step is thread-local; one forward pass per thread at a time.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Protocol

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

NAME = "ferrum"


class Step(Protocol):
    """One forward pass over cache sequences, as the attention function sees it."""

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
               scale: Optional[float], sliding_window: Optional[int],
               soft_cap: Optional[float]) -> torch.Tensor:
        """query [B, Hq, T, D], key/value [B, Hkv, T, D] (this pass's tokens) -> [B, T, Hq, D]."""


_local = threading.local()


def current() -> Optional[Step]:
    """The step the "ferrum" attention of this thread uses now (None: none)."""
    return getattr(_local, "step", None)


def set_current(step: Optional[Step]) -> Optional[Step]:
    """Make ``step`` the current one; returns the previous one (to restore afterwards)."""
    previous = current()
    _local.step = step
    return previous


@contextlib.contextmanager
def active(step: Step) -> Iterator[None]:
    """Make ``step`` the current one until the block ends."""
    previous = set_current(step)
    try:
        yield
    finally:
        set_current(previous)


def ferrum_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: object, scaling: Optional[float] = None,
                             dropout: float = 0.0, sliding_window: Optional[int] = None,
                             softcap: Optional[float] = None, **kwargs: object
                             ) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns ([B, T, Hq, D], no weights)."""
    step = current()
    if step is None:
        raise RuntimeError(
            "the 'ferrum' attention runs only inside generate with a FerrumCache (cache=...) or "
            "inside an Engine; this forward pass has neither")
    if dropout:
        raise ValueError(f"the 'ferrum' attention is for inference: dropout must be 0, got {dropout}")
    return step.attend(module.layer_idx, query, key, value, scale=scaling,
                       sliding_window=sliding_window, soft_cap=softcap), None


def ferrum_mask(*args: object, **kwargs: object) -> None:
    """No mask: the paged kernels take causality, padding and windows from the block tables."""
    return None


AttentionInterface.register(NAME, ferrum_attention_forward)
AttentionMaskInterface.register(NAME, ferrum_mask)
