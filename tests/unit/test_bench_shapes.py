"""Shape presets and explicit --m/--n/--k lists."""

from __future__ import annotations

import pytest

from envkit.bench.errors import BenchInputError
from envkit.bench.shapes import PRESETS, Shape, ShapeError, explicit_shapes, parse_dim, preset_shapes


def test_quick_presets_are_small_squares():
    assert preset_shapes("quick", "gpu") == [
        Shape(2048, 2048, 2048),
        Shape(4096, 4096, 4096),
        Shape(8192, 8192, 8192),
    ]
    assert preset_shapes("quick", "cpu") == [
        Shape(256, 256, 256),
        Shape(512, 512, 512),
        Shape(1024, 1024, 1024),
    ]


def test_presets_grow_and_exhaustive_is_a_full_grid():
    for device in ("cpu", "gpu"):
        sizes = [len(preset_shapes(p, device)) for p in PRESETS]
        assert sizes == sorted(sizes) and len(set(sizes)) == 3
    grid = preset_shapes("exhaustive", "gpu")
    assert len(grid) == 16**3  # mamf-finder's 1024-step M x N x K ranges up to 16384
    assert len(set(grid)) == len(grid)
    assert Shape(1024, 16384, 3072) in grid
    assert all(s.m % 1024 == 0 and s.n % 1024 == 0 and s.k % 1024 == 0 for s in grid)
    standard = preset_shapes("standard", "gpu")
    assert Shape(8192, 16384, 4096) in standard  # a 4096-wide MLP up-projection over 8192 tokens


def test_unknown_preset_or_device():
    with pytest.raises(ShapeError):
        preset_shapes("huge", "gpu")
    with pytest.raises(ShapeError):
        preset_shapes("quick", "tpu")


def test_parse_dim_forms():
    assert parse_dim("4096", "m") == [4096]
    assert parse_dim("1024,2048", "m") == [1024, 2048]
    assert parse_dim("1024:4096:1024", "m") == [1024, 2048, 3072, 4096]


@pytest.mark.parametrize("text", ["0", "-5", "abc", "1:2", "1:10:0", ",", "2.5"])
def test_parse_dim_rejects_bad_sizes(text):
    with pytest.raises(BenchInputError, match="--k"):
        parse_dim(text, "k")


def test_explicit_shapes_product_and_defaults():
    assert explicit_shapes("64", None, None) == [Shape(64, 64, 64)]
    assert explicit_shapes("128,64", None, None) == [Shape(64, 64, 64), Shape(128, 128, 128)]  # squares
    assert explicit_shapes(None, "32", None) == [Shape(32, 32, 32)]
    swept = {Shape(64, 32, 64), Shape(64, 32, 128), Shape(128, 32, 64), Shape(128, 32, 128)}
    assert set(explicit_shapes("64,128", "32", None)) == swept
    shapes = explicit_shapes("64,128", "32", "16:32:16")
    assert shapes == sorted(shapes, key=lambda s: s.m * s.n * s.k)
    assert set(shapes) == {Shape(m, 32, k) for m in (64, 128) for k in (16, 32)}
    assert str(Shape(1, 2, 3)) == "1x2x3"
    with pytest.raises(ShapeError):
        explicit_shapes(None, None, None)
