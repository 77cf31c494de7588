"""The optional vLLM comparison scripts (bench/*_vllm.py): they parse their options, refuse bad
ones, and where vLLM is not importable they say so and exit 0 (vLLM is never a dependency)."""

import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*_vllm.py"))
WITH_OPTIONS = ["bench_attention_vllm.py", "bench_kv_write_vllm.py"]


def run(script, *args, env=None):
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_the_scripts_are_found():
    assert set(WITH_OPTIONS) <= set(SCRIPTS)


@pytest.mark.parametrize("script", WITH_OPTIONS)
def test_help_parses(script):
    done = run(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.mark.parametrize("script, args, message", [
    ("bench_attention_vllm.py", ["--parts", "float,prefill"], "--parts takes"),
    ("bench_attention_vllm.py", ["--vllm-fp8-block-size", "48"], "a multiple of 32"),
    ("bench_kv_write_vllm.py", ["--vllm-block-sizes", "32,16"], "multiples of 32"),
])
def test_bad_options_exit_2_before_importing_vllm(script, args, message):
    done = run(script, *args)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_vllm_they_say_so_and_exit_0(script, tmp_path):
    # A vllm package that fails to import shadows any installed one, so this runs everywhere.
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = run(script, env=env)
    assert done.returncode == 0, done.stderr
    assert "vLLM is not importable here" in done.stdout
