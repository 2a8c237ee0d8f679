"""Placeholder: replaced by the training CLI (issue 4)."""

import typer

app = typer.Typer(help="train (not implemented yet)", no_args_is_help=True)


@app.command("todo")
def todo() -> None:
    """Not implemented yet."""
    raise typer.Exit(1)
