"""The demo over quantized storage and with "fast" attention: short runs that pass --verify
(the reference model reads the same formats; tolerances in ferrum_kv.demo.reference)."""

import json

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv.demo.reference import DEFAULT_TOLERANCE, default_tolerance
from ferrum_kv.demo.run import DemoOptions, run_demo
from test_cli import TINY_DEMO, run_main


@pytest.mark.parametrize("dtype", ["int8", "fp8_e4m3", "fp8_e5m2", "int4"])
def test_quantized_demo_matches_the_reference(dtype):
    options = DemoOptions(preset="tiny", sessions=8, num_blocks=40, num_host_blocks=8,
                          dtype=dtype, seed=3)
    result = run_demo(options, verify_run=True, progress=False)
    s, v = result.summary, result.verification
    assert v.ok and v.samples == s["samples"] and v.steps == s["generated_tokens"]
    assert v.tolerance == default_tolerance(dtype) > DEFAULT_TOLERANCE
    assert s["preemptions"] > 0 and s["prefix_hit_rate"] > 0
    # The finished samples come back, each with the logits its generated tokens were chosen from.
    assert len(result.samples) == s["samples"]
    assert sum(seq.num_generated for seq in result.samples) == s["generated_tokens"]
    assert all(len(seq.logits) == seq.num_generated > 0 for seq in result.samples)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "fp8_e4m3", "fp8_e5m2"])
def test_fast_precision_demo_matches_the_reference(dtype):
    options = DemoOptions(preset="tiny", sessions=6, num_blocks=40, num_host_blocks=8,
                          dtype=dtype, seed=3)
    exact = run_demo(options, verify_run=True, progress=False)
    fast = run_demo(DemoOptions(**{**options.__dict__, "precision": "fast"}), verify_run=True,
                    progress=False)
    assert fast.verification.ok and fast.verification.tolerance == default_tolerance(dtype, "fast")
    assert fast.summary["generated_tokens"] == exact.summary["generated_tokens"]
    if fkv.attention_fast_isas(dtype):  # the fast kernel ran: the logits moved, within bounds
        exact_logits = {(s.request.request_id, s.sample_index): np.stack(s.logits)
                        for s in exact.samples}
        assert any(not np.array_equal(np.stack(s.logits),
                                      exact_logits[s.request.request_id, s.sample_index])
                   for s in fast.samples)


def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be 'exact' or 'fast'"):
        DemoOptions(precision="slow")


def test_cli_precision_and_quantized_dtype(capsys):
    code, out, _ = run_main(TINY_DEMO + ["--dtype", "int8", "--precision", "fast", "--json",
                                         "--verify"], capsys)
    check = json.loads(out)["verify"]
    assert code == 0 and check["ok"] and check["mismatches"] == 0
    code, _, err = run_main(TINY_DEMO + ["--precision", "slow"], capsys)
    assert code == 2 and "--precision: invalid choice: 'slow'" in err
