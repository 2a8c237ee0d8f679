"""`envkit matrix`: show the version matrix, or one value of it, for scripts."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from envkit.matrix import MatrixError, load_matrix, matrix_path

app = typer.Typer(help="Show the version matrix (the one source of versions).", no_args_is_help=True)


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print the whole matrix as JSON.")) -> None:
    """Print the image rows (or the whole matrix with --json)."""
    try:
        m = load_matrix()
    except MatrixError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(m.raw, indent=2))
        return
    table = Table(title=f"envkit matrix ({matrix_path()})")
    for col in ("image", "variant", "version", "cuda", "python", "base image", "tag"):
        table.add_column(col)
    for r in m.images:
        table.add_row(r.name, r.variant, r.version, r.cuda or "-", r.python, r.base_image, r.tag)
    Console().print(table)


@app.command("get")
def get(key: str = typer.Argument(..., help="Dotted path, e.g. ansible.nvidia_driver_branch")) -> None:
    """Print one value of the matrix (dotted path); lists index by number."""
    node: Any = load_matrix().raw
    for part in key.split("."):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            typer.echo(f"error: {key!r} is not in the matrix (failed at {part!r})", err=True)
            raise typer.Exit(2) from None
    typer.echo(json.dumps(node) if isinstance(node, (dict, list)) else str(node))
