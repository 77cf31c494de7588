"""The ferrum-kv command: one-line errors with a non-zero exit, the --json schema, plan arithmetic,
the bench slot."""

import json
import subprocess
import sys

import pytest

from ferrum_kv import cli

TINY_DEMO = ["demo", "--model", "tiny", "--sessions", "4", "--blocks", "40", "--no-progress"]


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of ``ferrum-kv argv`` run in-process."""
    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv, status, message", [
    ([], 2, "required: COMMAND"),
    (["serve"], 2, "invalid choice: 'serve'"),
    (["demo", "--blocks", "0"], 2, "--blocks: must be at least 1, got 0"),
    (["demo", "--sessions", "many"], 2, "--sessions: expected an integer, got 'many'"),
    (["demo", "--dtype", "int3"], 2, "--dtype: invalid choice: 'int3'"),
    (["demo", "--model", "huge"], 2, "--model: invalid choice: 'huge'"),
    (["demo", "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
    (["plan", "--model", "Llama-3-8B", "--memory", "16XB"], 2, "expected a size like 16GiB"),
    (["plan", "--model", "gpt-5"], 2, "unknown model 'gpt-5'"),
    (["plan"], 2, "give --model or all of --layers, --kv-heads and --head-dim"),
    (["plan", "--model", "Mistral-7B", "--layers", "4"], 2, "not both"),
    # Valid options, impossible configuration: raised by the library, reported in one line.
    (TINY_DEMO[:-3] + ["--blocks", "4", "--no-progress"], 1, "the cache is too small"),
    (TINY_DEMO + ["--block-size", "0"], 2, "--block-size: must be at least 1"),
    (["plan", "--model", "Llama-3-8B", "--memory", "9" * 400 + "TiB"], 2, "absurdly large"),
    (["demo", "--blocks", "100000000", "--no-progress"], 1, "out of memory: a K/V arena of"),
    (TINY_DEMO + ["--admission-order", "lpm"], 2, "--admission-order: invalid choice: 'lpm'"),
    (TINY_DEMO + ["--max-wait-steps", "0"], 2, "--max-wait-steps: must be at least 1, got 0"),
    (TINY_DEMO + ["--restart"], 2, "--restart needs at least one --tier"),
    (TINY_DEMO + ["--tier", "s3://bucket"], 2, "a tier is disk:PATH, redis://"),
    (TINY_DEMO + ["--tier", "disk:/tmp/x", "--no-prefix-caching"], 2, "--tier needs prefix"),
])
def test_errors_are_one_line_and_a_non_zero_exit(argv, status, message, capsys):
    code, out, err = run_main(argv, capsys)
    assert code == status
    assert out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_threads_above_the_cpus_warn(capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    code, out, err = run_main(TINY_DEMO + ["--threads", "2"], capsys)
    assert code == 0 and "requests" in out
    assert "warning: --threads 2 is more than the 1 CPUs" in err


def test_a_library_error_from_a_bad_configuration_is_one_line(capsys):
    # 2**31 slots do not fit int32: CacheConfig raises ValueError.
    code, _, err = run_main(TINY_DEMO + ["--blocks", str(2**28), "--block-size", "16"], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("ferrum-kv: error: ")


def test_demo_json_is_one_object_with_the_summary_keys(capsys):
    code, out, _ = run_main(TINY_DEMO + ["--json"], capsys)
    assert code == 0
    summary = json.loads(out)  # the whole of stdout is one JSON object
    for key, kind in [("requests", int), ("prompt_tokens", int), ("generated_tokens", int),
                      ("tokens_per_s", float), ("prefix_hit_rate", float),
                      ("peak_blocks_used", int), ("preemptions", int), ("swap_outs", int),
                      ("cow_copies", int)]:
        assert isinstance(summary[key], kind), key
    assert summary["requests"] >= 4 and summary["generated_tokens"] > 0
    assert 0 <= summary["prefix_hit_rate"] <= 1
    assert 0 < summary["peak_blocks_used"] <= 40
    assert "verify" not in summary


def test_demo_verify_json_reports_the_check(capsys):
    code, out, _ = run_main(TINY_DEMO + ["--json", "--verify"], capsys)
    check = json.loads(out)["verify"]
    assert code == 0 and check["ok"] and check["mismatches"] == 0
    assert check["samples"] == json.loads(out)["samples"]


def test_demo_admission_order_reaches_the_scheduler(capsys):
    code, out, _ = run_main(TINY_DEMO + ["--json", "--verify", "--admission-order",
                                         "shortest_prefill", "--max-wait-steps", "5"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["verify"]["ok"]
    assert summary["admission_order"] == "shortest_prefill"
    assert summary["max_wait_steps"] == 5
    assert 1 <= summary["mean_ttft_steps"] <= summary["steps"]


def test_demo_table_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "steps.png"
    code, out, _ = run_main(TINY_DEMO + ["--plot", str(plot)], capsys)
    assert code == 0
    assert "prefix hit rate (tokens)" in out and "preemptions (swap / recompute)" in out
    assert "mean time to first token" in out and "steps (fcfs)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_restart_over_a_disk_tier_verifies_and_saves_prefill(tmp_path, capsys):
    # The restarted run loads what the first one computed: every token still matches the
    # reference (K/V bit-exact after the round trip), and the model runs fewer tokens.
    code, out, _ = run_main(TINY_DEMO + ["--tier", f"disk:{tmp_path}", "--restart", "--json",
                                         "--verify"], capsys)
    runs = json.loads(out)
    first, restarted = runs["first"], runs["restarted"]
    assert code == 0 and first["verify"]["ok"] and restarted["verify"]["ok"]
    assert first["tier_blocks_written"] > 0 and first["tier_errors"] == 0
    assert restarted["tier_loaded_tokens"] > 0
    assert restarted["computed_tokens"] < first["computed_tokens"]
    code, out, _ = run_main(TINY_DEMO + ["--tier", f"disk:{tmp_path}", "--restart"], capsys)
    assert code == 0 and "prefill tokens saved through the tiers after the restart" in out


def test_plan_llama_3_8b(capsys):
    code, out, _ = run_main(["plan", "--model", "llama-3-8b", "--memory", "16GiB",
                             "--context-len", "8192", "--json"], capsys)
    plan = json.loads(out)
    # 32 layers * 8 KV heads * 128 dims * 2 (K, V) * 2 bytes (bfloat16)
    assert code == 0 and plan["model"] == "Llama-3-8B"
    assert plan["bytes_per_token"] == 131072
    assert plan["bytes_per_block"] == 16 * 131072
    assert plan["num_blocks"] == 8192 and plan["tokens"] == 131072
    assert plan["blocks_per_sequence"] == 512 and plan["concurrent_sequences"] == 16


def test_plan_qwen_explicit_geometry_and_rounding(capsys):
    # Qwen2.5-7B: 28 layers, 4 KV heads, head_dim 128 -> 57344 bytes per token in float16.
    code, out, _ = run_main(["plan", "--layers", "28", "--kv-heads", "4", "--head-dim", "128",
                             "--dtype", "float16", "--memory", "10GB", "--context-len", "3000",
                             "--json"], capsys)
    plan = json.loads(out)
    assert code == 0 and plan["bytes_per_token"] == 57344
    assert plan["num_blocks"] == 10**10 // (16 * 57344) == 10899
    assert plan["blocks_per_sequence"] == 188  # ceil(3000 / 16)
    assert plan["concurrent_sequences"] == 57  # 10899 // 188


def test_plan_table(capsys):
    code, out, _ = run_main(["plan", "--model", "Llama-3-70B", "--memory", "80GiB",
                             "--context-len", "32768"], capsys)
    # 80 * 8 * 128 * 2 * 2 = 327680 bytes per token; 80 GiB / (16 * 327680) = 16384 blocks.
    assert code == 0
    assert "327680 B (320.0 KiB)" in out and "16384 (262144 tokens)" in out
    assert out.rstrip().endswith("concurrent sequences  8")


@pytest.mark.parametrize("text, size", [("16GiB", 16 * 2**30), ("512MiB", 512 * 2**20),
                                        ("1.5GB", 1_500_000_000), ("4096", 4096), ("2 kib", 2048)])
def test_parse_memory(text, size):
    assert cli.parse_memory(text) == size


def test_bench_runs_the_quick_suite_and_returns_its_status(capsys, monkeypatch):
    from ferrum_kv import benchmarks

    calls = []
    monkeypatch.setattr(benchmarks, "run_quick_suite", lambda: calls.append(1) or 3)
    code, _, _ = run_main(["bench"], capsys)
    assert calls == [1] and code == 3


def test_python_dash_m_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "ferrum_kv", "plan", "--model", "Mistral-7B"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "concurrent sequences  16" in result.stdout
