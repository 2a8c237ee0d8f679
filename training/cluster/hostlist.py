"""Slurm host lists (`node[01-03,7],gpu-a`) expanded the way `scontrol show hostnames` does."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class HostlistError(ValueError):
    """The text is not a Slurm host list."""


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostlistError(f"unbalanced ']' in host list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unbalanced '[' in host list {text!r}")
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_one(item: str) -> list[str]:
    """Expand the first bracket group, then the rest (rack[1-2]-n[1-4]) recursively."""
    match = re.search(r"\[([^\[\]]*)\]", item)
    if not match:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    out: list[str] = []
    for spec in match.group(1).split(","):
        rng = _RANGE.match(spec.strip())
        if not rng:
            raise HostlistError(f"bad range {spec!r} in host list item {item!r}")
        lo, hi = rng.group(1), rng.group(2) or rng.group(1)
        if int(hi) < int(lo):
            raise HostlistError(f"descending range {spec!r} in host list item {item!r}")
        width = len(lo)  # node[01-10] keeps the zero padding
        for n in range(int(lo), int(hi) + 1):
            out.extend(_expand_one(f"{head}{str(n).zfill(width)}{tail}"))
    return out


def expand_hostlist(text: str) -> list[str]:
    """Every host of `text`, in Slurm's order (the first one is the allocation's first node)."""
    text = text.strip()
    if not text:
        raise HostlistError("empty host list")
    return [host for item in _split_top(text) for host in _expand_one(item)]
