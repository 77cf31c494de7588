"""Bridges from ferrum_kv to other frameworks; each submodule imports its framework itself, so
``import ferrum_kv`` (and this package) never imports them.

- ``ferrum_kv.integrations.transformers``: a paged cache for Hugging Face transformers'
  ``generate`` (``FerrumCache``) and a continuous-batching engine (``Engine``); docs/transformers.md.
"""
