"""The `envkit` command line: a thin root that mounts each area's commands.

Sub-commands live beside the code they drive (envkit/doctor, envkit/bench,
envkit/images, training/). None of them imports torch or tensorflow at
start-up, and `train` is mounted lazily: `envkit doctor` never imports the
training package (dependencies run one way: training uses envkit, not back).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from envkit import __version__
from envkit.accept.cli import accept as accept_command
from envkit.bench.cli import app as bench_app
from envkit.cli_support import EnvkitGroup, make_app
from envkit.doctor.cli import doctor as doctor_command
from envkit.images.cli import app as images_app
from envkit.matrix_cli import app as matrix_app

# name -> (module, attribute, one-line help shown in `envkit --help` without importing it)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": (
        "training.cli",
        "app",
        "Train, fine-tune and test a small GPT: prepare | pretrain | finetune | test | cycle.",
    ),
}


def _placeholder(name: str, help_text: str) -> TyperGroup:
    """Stands for a lazily mounted group in the root's help listing."""
    return TyperGroup(name=name, help=help_text, short_help=help_text)


class EnvkitRoot(EnvkitGroup):
    """The root group: the shared exit-code policy, plus sub-apps imported on first use."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            if ctx.resilient_parsing or getattr(ctx, "_envkit_listing", False):
                return _placeholder(cmd_name, LAZY_COMMANDS[cmd_name][2])
            module, attr, _ = LAZY_COMMANDS[cmd_name]
            sub_app: typer.Typer = getattr(importlib.import_module(module), attr)
            command = typer.main.get_command(sub_app)
            command.name = cmd_name
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        ctx._envkit_listing = True  # type: ignore[attr-defined]  # list lazy groups without importing them
        try:
            super().format_help(ctx, formatter)
        finally:
            ctx._envkit_listing = False  # type: ignore[attr-defined]


app = make_app(
    name="envkit",
    cls=EnvkitRoot,
    help="Provision and prove deep-learning environments: doctor, bench, images, train.",
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
app.command(name="accept")(accept_command)
app.add_typer(bench_app, name="bench")
app.add_typer(images_app, name="images")
app.add_typer(matrix_app, name="matrix")


def main() -> None:
    """Console-script entry point."""
    app()
