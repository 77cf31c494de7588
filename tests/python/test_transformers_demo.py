"""``ferrum-kv demo --model hf:ARCH`` (the demo workload on a small random transformers model,
through the engine, ``--verify`` against transformers' own generate), and torch staying optional:
``import ferrum_kv`` and the NumPy demo never import torch or transformers."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import hf_models
from test_cli import run_main as run_cli


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_hf_demo_verifies_against_transformers_generate(arch, capsys):
    hf_models.require("torch", "transformers")
    status, out, err = run_cli(["demo", "--model", f"hf:{arch}", "--sessions", "4", "--verify",
                                "--json", "--no-progress"], capsys)
    assert status == 0, err
    summary = json.loads(out)
    assert summary["model"] == f"hf:{arch}"
    assert summary["verify"]["ok"] and summary["verify"]["steps"] == summary["generated_tokens"]
    assert summary["verify"]["max_relative_error"] < 1e-4
    assert summary["prefix_hit_tokens"] > 0  # the workload's shared system prompts


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_ferrum_kv_imports_neither_torch_nor_transformers():
    result = _python(
        "import sys, ferrum_kv, ferrum_kv.demo, ferrum_kv.integrations, ferrum_kv.cli\n"
        "from ferrum_kv.demo import run, scheduler, paged\n"
        "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    # (an editable install may print its rebuild log on stdout as well)
    assert re.search(r"loaded: \[\]", result.stdout), result.stdout


def test_hf_demo_without_torch_is_a_usage_error():
    result = _python(  # a None entry in sys.modules makes the import fail
        "import sys; sys.modules['torch'] = None\n"
        "from ferrum_kv.cli import main\n"
        "sys.exit(main(['demo', '--model', 'hf:llama', '--no-progress']))")
    assert result.returncode == 2
    assert "needs torch and transformers: pip install 'ferrum-kv[hf]'" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ferrum-kv")]
    assert len(errors) == 1  # one line (an editable install may log its rebuild there too)
