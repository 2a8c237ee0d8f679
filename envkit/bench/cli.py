"""Placeholder: replaced by the bench implementation."""

import typer

app = typer.Typer(help="bench (not implemented yet)", no_args_is_help=True)


@app.command("todo")
def todo() -> None:
    """Not implemented yet."""
    raise typer.Exit(1)
