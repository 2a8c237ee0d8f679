"""The `envkit` command line: a thin root that mounts each area's commands.

Sub-commands live beside the code they drive (envkit/doctor, envkit/bench,
envkit/images, training/). None of them imports torch or tensorflow at
start-up: frameworks load lazily, inside the command that needs them.
"""

from __future__ import annotations

import typer

from envkit import __version__
from envkit.bench.cli import app as bench_app
from envkit.doctor.cli import doctor as doctor_command
from envkit.images.cli import app as images_app
from envkit.matrix_cli import app as matrix_app
from training.cli import app as train_app

app = typer.Typer(
    name="envkit",
    help="Provision and prove deep-learning environments: doctor, bench, images, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"envkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """envkit: is this machine's deep-learning stack right, and is it fast?"""


app.command(name="doctor")(doctor_command)
app.add_typer(bench_app, name="bench")
app.add_typer(images_app, name="images")
app.add_typer(train_app, name="train")
app.add_typer(matrix_app, name="matrix")


def main() -> None:
    """Console-script entry point."""
    app()
