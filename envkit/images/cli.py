"""Placeholder: replaced by the images implementation."""

import typer

app = typer.Typer(help="images (not implemented yet)", no_args_is_help=True)


@app.command("todo")
def todo() -> None:
    """Not implemented yet."""
    raise typer.Exit(1)
