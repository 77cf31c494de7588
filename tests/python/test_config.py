"""CacheConfig: validation with the actual values in the message, derived sizes."""

import pytest

import ferrum_kv as fkv

GEOMETRY = dict(num_layers=4, num_kv_heads=8, head_dim=128, block_size=16, num_blocks=64)


@pytest.mark.parametrize("dtype, size", [("float32", 4), ("float16", 2), ("bfloat16", 2)])
def test_bytes_per_block(dtype, size):
    cfg = fkv.CacheConfig(dtype=dtype, **GEOMETRY)
    assert cfg.bytes_per_block == 4 * 2 * 8 * 16 * 128 * size
    assert cfg.bytes_per_token * 16 == cfg.bytes_per_block
    assert cfg.dtype == dtype
    assert "num_layers=4" in repr(cfg)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("num_layers", 0, "num_layers must be >= 1, got 0"),
        ("num_kv_heads", -2, "num_kv_heads"),
        ("head_dim", 2**31, "head_dim"),
        ("block_size", 0, "block_size"),
        ("num_blocks", 0, "num_blocks"),
        ("dtype", "int3", "got 'int3'"),
        ("num_host_blocks", -1, "num_host_blocks"),
        ("high_watermark", 1.5, "high_watermark"),
        ("high_watermark", float("nan"), "high_watermark"),
        ("critical_watermark", 0.5, "critical_watermark"),
    ],
)
def test_invalid_fields_raise_value_error_naming_them(field, value, match):
    kwargs = dict(GEOMETRY, **{field: value})
    with pytest.raises(ValueError, match=match):
        fkv.CacheConfig(**kwargs)


def test_overflowing_geometry_is_rejected_before_allocating():
    with pytest.raises(ValueError, match="too large"):
        fkv.CacheConfig(num_layers=2**20, num_kv_heads=2**10, head_dim=2**10, block_size=2**10,
                        num_blocks=2**20)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        fkv.CacheConfig(4, 8, 128, 16, 64)
