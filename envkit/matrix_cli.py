"""`envkit matrix`: show the version matrix, or one value of it, for scripts."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from envkit.cli_support import CheckFailed, UsageError, emit, make_app
from envkit.matrix import MatrixError, load_matrix, matrix_path

app = make_app(help="Show the version matrix (the one source of versions).")


def _load() -> Any:
    try:
        return load_matrix()
    except MatrixError as exc:  # the packaged file is broken or missing: not the user's input
        raise CheckFailed(f"{exc}; reinstall envkit or fix {matrix_path()}") from None


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print the whole matrix as JSON.")) -> None:
    """Print the image rows (or the whole matrix with --json)."""
    m = _load()

    def render(con: Console) -> None:
        table = Table(title=f"envkit matrix ({matrix_path()})")
        for col in ("image", "variant", "version", "cuda", "python", "base image", "tag"):
            table.add_column(col)
        for r in m.images:
            table.add_row(r.name, r.variant, r.version, r.cuda or "-", r.python, r.base_image, r.tag)
        con.print(table)

    emit(m.raw, as_json=as_json, render=render)


@app.command("get")
def get(key: str = typer.Argument(..., help="Dotted path, e.g. ansible.nvidia_driver_branch")) -> None:
    """Print one value of the matrix (dotted path); lists index by number."""
    node: Any = _load().raw
    for part in key.split("."):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise UsageError(
                f"{key!r} is not in the matrix (failed at {part!r}); see `envkit matrix show --json`"
            ) from None
    typer.echo(json.dumps(node) if isinstance(node, (dict, list)) else str(node))
