"""Every public name of the package, and every public method and property of its classes, has a
docstring beyond pybind11's generated signature (issue 17: shapes, dtypes and errors are written
next to each call)."""

import inspect
import re

import pytest

import ferrum_kv as fkv

# Dunder methods users call (through syntax or directly) and that must be documented.
DOCUMENTED_DUNDERS = {"__init__", "__contains__", "__len__"}


def own_text(doc, name):
    """The docstring without pybind11's signature lines ("name(self: ...) -> ...", the numbered
    overload signatures and their "Overloaded function." header)."""
    if not doc:
        return ""
    signature = re.compile(rf"^(\d+\. )?{re.escape(name)}\(.*\)( -> .*)?$")
    lines = [line for line in doc.strip().splitlines()
             if not signature.match(line.strip()) and line.strip() != "Overloaded function."]
    return "\n".join(lines).strip()


def public_members():
    for name in fkv.__all__:
        if name == "__version__":
            continue
        obj = getattr(fkv, name)
        yield name, obj.__doc__, name
        if not inspect.isclass(obj):
            continue
        # Members of the class and of its ferrum_kv bases (ferrum_kv.PagedKvCache extends the
        # C++ class), the most derived definition of each.
        members = {}
        for klass in reversed(obj.__mro__):
            if klass.__module__.startswith("ferrum_kv"):
                members.update(vars(klass))
        for attr, value in members.items():
            if attr.startswith("_") and attr not in DOCUMENTED_DUNDERS:
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            yield f"{name}.{attr}", value.__doc__, attr


MEMBERS = list(public_members())


def test_the_walk_covers_the_cache_api():
    names = {qualified for qualified, _, _ in MEMBERS}
    for expected in ("PagedKvCache.append_tokens", "PagedKvCache.free_sequence",
                     "PagedKvCache.can_allocate", "PagedKvCache.can_append",
                     "PagedKvCache.num_tokens", "PagedKvCache.check_invariants",
                     "PagedKvCache.__init__", "BatchMetadata.num_computed",
                     "paged_attention_decode", "CacheConfig.block_size"):
        assert expected in names


def test_own_text_strips_only_signatures():
    assert own_text("f(self: X, a: int) -> None\n", "f") == ""
    assert own_text("f(*args, **kwargs)\nOverloaded function.\n\n1. f(a: int) -> bool\n", "f") == ""
    assert own_text("f(a: int) -> bool\n\nSays what f does.\n", "f") == "Says what f does."


@pytest.mark.parametrize("qualified,doc,name", MEMBERS, ids=[m[0] for m in MEMBERS])
def test_public_member_has_a_docstring(qualified, doc, name):
    assert own_text(doc, name), f"{qualified} has no docstring"
