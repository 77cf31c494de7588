"""``ferrum-kv demo``: a small Llama-style model served by a continuous-batching scheduler over
PagedKvCache, with a contiguous NumPy reference to verify it (docs/demo.md).

Modules: ``presets`` (model geometries), ``model`` (the NumPy decoder), ``paged`` (its attention
over the cache), ``workload`` (synthetic requests), ``scheduler`` (continuous batching,
preemption), ``reference`` (the ``--verify`` check), ``report`` (table, JSON, plot), ``run``
(one run end to end).
"""

from ferrum_kv.demo.run import DemoOptions, DemoResult, run_demo

__all__ = ["DemoOptions", "DemoResult", "run_demo"]
