"""ferrum_kv for Hugging Face transformers (5.x; tested with 5.25): a paged KV cache for
``generate`` and a continuous-batching engine (docs/transformers.md).

Importing this module registers the attention implementation and mask function ``"ferrum"``::

    from ferrum_kv.integrations.transformers import FerrumCache, Engine
    model.set_attn_implementation("ferrum")
    out = model.generate(ids, attention_mask=mask,
                         cache=FerrumCache(model, num_blocks=512, dtype="float32"))

Needs torch and transformers (``pip install ferrum-kv[hf]``).
"""

from ferrum_kv.integrations.transformers import _attention  # registers "ferrum"
from ferrum_kv.integrations.transformers.cache import FerrumCache
from ferrum_kv.integrations.transformers.engine import Engine

__all__ = ["Engine", "FerrumCache"]
