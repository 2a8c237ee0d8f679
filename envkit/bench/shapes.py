"""Matmul shapes: the quick / standard / exhaustive presets and explicit --m --n --k lists."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from envkit.bench.errors import BenchInputError

PRESETS = ("quick", "standard", "exhaustive")


class ShapeError(BenchInputError):
    """A shape request a user can fix (non-positive size, unreadable range, unknown preset)."""


@dataclass(frozen=True, order=True)
class Shape:
    """C (m x n) = A (m x k) @ B (k x n)."""

    m: int
    n: int
    k: int

    def __str__(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"


def _squares(sizes: list[int]) -> list[Shape]:
    return [Shape(s, s, s) for s in sizes]


def _grid(ms: range, ns: range, ks: range) -> list[Shape]:
    return [Shape(m, n, k) for m, n, k in itertools.product(ms, ns, ks)]


def preset_shapes(preset: str, device: str) -> list[Shape]:
    """Shapes of a preset for a device kind ('cpu' or 'gpu').

    GPU presets follow mamf-finder: squares for a quick look, squares plus the
    wide/tall products of transformer layers for `standard`, and a full M x N x K
    grid (its suggested 1024-step ranges) for `exhaustive`. CPU presets are the
    same ideas scaled to what a CPU finishes in seconds to minutes.
    """
    if preset not in PRESETS:
        raise ShapeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if device not in ("cpu", "gpu"):
        raise ShapeError(f"unknown device kind {device!r}; expected cpu or gpu")
    if device == "gpu":
        if preset == "quick":
            return _squares([2048, 4096, 8192])
        if preset == "standard":
            # squares, then hidden x 4·hidden MLP products of common model widths (tokens = 8192)
            mlp = [Shape(8192, 4 * h, h) for h in (4096, 5120, 8192)]
            mlp += [Shape(8192, h, 4 * h) for h in (4096, 5120, 8192)]
            return _squares(list(range(1024, 16384 + 1, 1024))) + mlp
        return _grid(range(1024, 16384 + 1, 1024), range(1024, 16384 + 1, 1024), range(1024, 16384 + 1, 1024))
    if preset == "quick":
        return _squares([256, 512, 1024])
    if preset == "standard":
        return [*_squares(list(range(256, 2048 + 1, 256))), Shape(2048, 4096, 1024), Shape(2048, 1024, 4096)]
    return _grid(range(512, 4096 + 1, 512), range(512, 4096 + 1, 512), range(512, 4096 + 1, 512))


def parse_dim(text: str, name: str) -> list[int]:
    """'1024', '1024,2048' or 'start:stop:step' (stop inclusive) -> sizes; all must be positive."""
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                bits = [int(b) for b in part.split(":")]
                if len(bits) != 3 or bits[2] <= 0:
                    raise ValueError
                start, stop, step = bits
                values.extend(range(start, stop + 1, step))
            else:
                values.append(int(part))
        except ValueError:
            raise ShapeError(
                f"--{name} {text!r} is not a size list; use e.g. 4096, 1024,2048 or 1024:8192:1024"
            ) from None
    if not values:
        raise ShapeError(f"--{name} {text!r} names no size; use e.g. 4096 or 1024:8192:1024")
    bad = [v for v in values if v <= 0]
    if bad:
        raise ShapeError(f"--{name} must be positive, got {bad[0]}; sizes are matrix dimensions")
    return values


def explicit_shapes(m: str | None, n: str | None, k: str | None) -> list[Shape]:
    """One dimension given: squares of its sizes. Several: their product, a missing one
    repeating the first given (as mamf-finder sweeps M against fixed N and K)."""
    given = {name: text for name, text in (("m", m), ("n", n), ("k", k)) if text is not None}
    if not given:
        raise ShapeError("no shape given; pass --m (and optionally --n/--k) or --preset")
    first = next(iter(given.values()))
    if len(given) == 1:
        name = next(iter(given))
        return [Shape(s, s, s) for s in sorted(set(parse_dim(first, name)))]
    ms = parse_dim(m if m is not None else first, "m")
    ns = parse_dim(n if n is not None else first, "n")
    ks = parse_dim(k if k is not None else first, "k")
    return sorted({Shape(a, b, c) for a, b, c in itertools.product(ms, ns, ks)}, key=_volume)


def _volume(shape: Shape) -> tuple[int, Shape]:
    return (shape.m * shape.n * shape.k, shape)
