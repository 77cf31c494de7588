"""The "fast" precision over quantized K/V (int8, fp8_e4m3, fp8_e5m2, int4) against the float64
reference on the dequantized values. The grids of test_attention.py (block sizes, head_dim 64-256
with 72/80/96, GQA 1/4/8, contexts 1-4097 in mixed batches, prefill with and without a cached
prefix, every option) run it in every kernel variant inside test_attention_quantized.py's tests
(check_fast_decode / check_fast_prefill, on the same storage as the exact checks); here: which
formats have a fast kernel, and extreme inputs.

Tolerance: 1.5e-2 relative (the issue's bound). The int8 fast kernel (query in two int8 digits,
int16 weights: attention_quant_avx512fast.cc) measured at most 3.6e-4 on these grids (decode;
2.5e-4 with the options); with one query digit it measured 1.2-2.6e-2, over the bound. A
variant without a fast kernel for the format (attention_fast_isas) must give the exact result bit
for bit, one with it must differ (else the fast kernel did not run).
"""

import numpy as np
import pytest

import ferrum_kv._core as core
from ferrum_kv import reference as ref
from test_attention import FAST_ISAS
from test_attention_quantized import FORMATS, QuantizedCase


def test_fast_quantized_isas_are_reported_per_format():
    """int8 has a fast kernel exactly where bfloat16 has one (AVX-512 with VNNI and BF16, and the
    "amx" variant); the formats without one report none."""
    assert core.attention_fast_isas("int8") == core.attention_fast_isas("bfloat16")
    for dtype in ("fp8_e4m3", "fp8_e5m2", "int4"):
        assert core.attention_fast_isas(dtype) == []


@pytest.mark.parametrize("dtype", FORMATS)
def test_fast_handles_constant_and_extreme_rows(dtype):
    """Constant K/V rows (scale 0), a zero query (scale 0) and huge queries (a one-hot softmax)
    stay finite and within the bound."""
    case = QuantizedCase(dtype, 16, 128, 1, 4, [40, 3], layers=(1,))
    zero_row = np.zeros((1, 128), np.float32)
    for offset in range(16):
        case.storage.write_slot(int(case.block_tables[0, 0]), 1, offset, zero_row + 0.5, zero_row)
    for scale in (0.0, 1.0, 1e3):
        q = scale * case.queries(2)
        args = (q, case.storage, 1, case.block_tables, case.context_lens)
        expected = ref.paged_attention_decode_reference(*args)
        for isa in FAST_ISAS:
            out = core.paged_attention_decode_tables(*args, isa=isa, precision="fast")
            assert np.isfinite(out).all(), (isa, scale)
            error = np.linalg.norm(out - expected) / max(np.linalg.norm(expected), 1e-30)
            assert error < 1.5e-2, (isa, scale, error)


# Shapes the AMX kernel treats apart: 12 and 15 query rows per KV head (two C tiles of 8 rows),
# head_dim 66 and 130 (a last chunk of 2 bytes, read 4-byte rounded against zero digits) and 36,
# blocks of 1 and 5 keys (keys copied into the padded 16-row buffer) and of 64 (spans of 64 keys,
# four A tiles each).
AGREEMENT_GRID = [
    (16, 128, 1, 12, [1000, 17]),
    (5, 66, 2, 15, [300, 1]),
    (64, 130, 1, 8, [200, 64]),
    (1, 36, 1, 4, [50]),
]


@pytest.mark.parametrize("block_size,head_dim,num_kv_heads,group,context_lens", AGREEMENT_GRID)
def test_int8_fast_variants_agree_with_each_other_and_the_reference(block_size, head_dim,
                                                                     num_kv_heads, group,
                                                                     context_lens):
    """Every variant with an int8 fast kernel ("avx512": vpdpbusd; "amx": tdpbusd tiles) takes the
    same integer dot products of the same query digits, so their outputs agree to float32
    rounding (1e-4 relative; a wrong tile layout or row mapping is off by order 1), and each is
    within the 1.5e-2 bound of the float64 reference."""
    case = QuantizedCase("int8", block_size, head_dim, num_kv_heads, group, context_lens,
                         layers=(0,))
    q = case.queries(len(context_lens))
    args = (q, case.storage, 0, case.block_tables, case.context_lens)
    expected = ref.paged_attention_decode_reference(*args)
    outputs = {isa: core.paged_attention_decode_tables(*args, isa=isa, precision="fast")
               for isa in core.attention_fast_isas("int8")}
    for isa, out in outputs.items():
        error = np.linalg.norm(out - expected) / np.linalg.norm(expected)
        assert error < 1.5e-2, (isa, error)
    names = sorted(outputs)
    for a, b in zip(names, names[1:]):
        difference = np.linalg.norm(outputs[a] - outputs[b]) / np.linalg.norm(outputs[a])
        assert difference < 1e-4, (a, b, difference)
