"""Placeholder: replaced by the doctor implementation (issue 2)."""

import typer


def doctor() -> None:
    """Verify drivers, GPUs and the deep-learning stack (not implemented yet)."""
    typer.echo("envkit doctor: not implemented yet", err=True)
    raise typer.Exit(1)
