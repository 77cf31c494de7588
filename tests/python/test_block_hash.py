"""ferrum_kv._core.block_hashes against a pure-Python hashlib implementation of the spec."""

import hashlib
import struct

import numpy as np
import pytest

from ferrum_kv._core import block_hashes, sha256_impl


def spec_block_hashes(tokens, block_size, namespace=b""):
    """The api.md spec, written directly with hashlib."""
    parent = hashlib.sha256(b"ferrum-kv/v1" + namespace).digest()
    hashes = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = [int(t) for t in tokens[start:start + block_size]]
        parent = hashlib.sha256(parent + struct.pack(f"<{block_size}I", *block)).digest()
        hashes.append(parent)
    return hashes


def test_reports_an_implementation():
    assert sha256_impl() in ("sha-ni", "portable")


@pytest.mark.parametrize("block_size", [1, 5, 16, 32])
@pytest.mark.parametrize("namespace", [b"", b"tenant-7", bytes(range(256))])
def test_matches_the_spec_on_random_tokens(block_size, namespace):
    rng = np.random.default_rng(block_size * 1000 + len(namespace))
    for num_tokens in (0, 1, block_size - 1, block_size, 3 * block_size + 2, 517):
        tokens = rng.integers(0, 2**31, size=num_tokens, dtype=np.int64).astype(np.int32)
        if num_tokens:
            tokens[0] = 2**31 - 1
        expected = spec_block_hashes(tokens, block_size, namespace)
        got = block_hashes(tokens, block_size, namespace)
        assert len(got) == num_tokens // block_size
        assert got == expected
        assert all(type(h) is bytes and len(h) == 32 for h in got)


def test_accepts_lists_and_other_integer_dtypes():
    tokens = list(range(100, 140))
    expected = spec_block_hashes(tokens, 8)
    assert block_hashes(tokens, 8) == expected
    assert block_hashes(np.array(tokens, dtype=np.uint16), 8) == expected
    assert block_hashes(np.array(tokens, dtype=np.int64), block_size=8, namespace=b"") == expected


def test_partial_trailing_block_is_ignored():
    tokens = np.arange(1, 40, dtype=np.int32)  # 39 tokens: 2 full blocks of 16 and 7 more
    full = block_hashes(tokens[:32], 16)
    assert block_hashes(tokens, 16) == full
    assert block_hashes(tokens[:15], 16) == []


def test_chain_shares_prefixes_and_namespaces_separate():
    a = np.arange(64, dtype=np.int32)
    b = a.copy()
    b[40] += 1  # block 2 of 4
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert ha[:2] == hb[:2]
    assert all(x != y for x, y in zip(ha[2:], hb[2:]))
    hx, hy = block_hashes(a, 16, b"x"), block_hashes(a, 16, b"y")
    assert all(x != y for x, y in zip(hx, hy))
    assert all(x != y for x, y in zip(ha, hx))


def test_argument_errors():
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        block_hashes(np.array([1, 2, -3, 4], dtype=np.int32), 2)
    with pytest.raises(ValueError, match=r"tokens\[2\] = -1"):
        block_hashes([1, 2, -1], 2)  # in the ignored partial block
    with pytest.raises(ValueError, match="integer dtype"):
        block_hashes(np.array([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2], 0)
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2], -4)
    with pytest.raises(ValueError, match="1-D"):
        block_hashes(np.zeros((2, 2), dtype=np.int32), 2)
    with pytest.raises(IndexError):
        block_hashes([2**31], 1)
    with pytest.raises(TypeError):
        block_hashes([1, 2], 1, "tenant")
    with pytest.raises(TypeError):
        block_hashes([1, 2], 1, namespace=None)
