"""Write envkit's runtime requirements (from pyproject.toml) plus the framework pin.

Runs inside the builder stage before envkit itself is installed, so the
dependency layer depends on pyproject.toml and the framework build args only:
a code-only change leaves it cached. Standard library only (tomllib, 3.11+).

usage: requirements.py PYPROJECT OUT [--extra NAME]... [REQUIREMENT]...
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str], pins: list[str]) -> list[str]:
    """The project's base dependencies, the named extras' entries and `pins`."""
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    lines = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"requirements.py: pyproject.toml has no extra {extra!r}")
        # Self-references ("envkit[train]") are already expanded by naming extras explicitly.
        lines += [req for req in optional[extra] if not req.startswith(project["name"])]
    return lines + pins


def main(argv: list[str]) -> None:
    pyproject, out, rest = argv[0], argv[1], argv[2:]
    extras: list[str] = []
    pins: list[str] = []
    while rest:
        arg = rest.pop(0)
        if arg == "--extra":
            extras.append(rest.pop(0))
        else:
            pins.append(arg)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(requirements(pyproject, extras, pins)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
