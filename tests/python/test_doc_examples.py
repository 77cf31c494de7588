"""Every ```python block of README.md and docs/*.md runs as written (docs that match the code):
the blocks of one file run in order in one namespace, so a page may build on its earlier blocks.
The README's error paragraph is checked against the code too."""

import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

import ferrum_kv as fkv
import hf_models

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page):
    return BLOCK.findall(page.read_text())


def test_the_pages_have_blocks_to_run():
    pages = {page.name for page in PAGES if python_blocks(page)}
    assert {"README.md", "serving_loop.md", "layout.md", "prefix_cache.md",
            "scheduler_contract.md"} <= pages


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_python_blocks_run(page):
    blocks = python_blocks(page)  # torch / transformers pages: optional extras, required in CI
    hf_models.require(*[name for name in ("torch", "transformers")
                        if any(f"import {name}" in code or f"{name} import" in code
                               for code in blocks)])
    namespace = {"__name__": f"doc_{page.stem}"}
    for number, code in enumerate(blocks, 1):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{page.name}, python block {number}", "exec"), namespace)


def test_readme_error_paragraph_matches_the_code():
    text = " ".join(ROOT.joinpath("README.md").read_text().split())
    assert "wrong shape, dtype or layout raises `ValueError`" in text
    assert "wrong Python type" in text and "`TypeError`" in text
    cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=4, block_size=4, num_blocks=4)
    cache = fkv.PagedKvCache(cfg)
    cache.add_sequence(1, [1, 2, 3])
    slots = cache.slot_mapping(1, 0, 1)
    good = np.zeros((1, 2, 4), np.float32)
    for k in (np.zeros((1, 2, 3), np.float32), good.astype(np.float64),
              np.zeros((1, 2, 8), np.float32)[:, :, ::2]):
        with pytest.raises(ValueError, match="k must"):
            cache.write_kv(0, slots, k, good)
    with pytest.raises(TypeError):
        cache.write_kv(0, slots, good.tolist(), good)
    with pytest.raises(TypeError):
        cache.num_tokens("1")
    with pytest.raises(IndexError):
        cache.write_kv(5, slots, good, good)
    with pytest.raises(KeyError):
        cache.num_tokens(2)
