"""Every envkit command answers bad input the same way: exit 2, one `error:` line, no traceback.

The command tree is walked from `envkit.cli.app` itself (train, mounted lazily, and
images included), so a command added later is covered without touching this file.
"""

from __future__ import annotations

import enum
import subprocess
import sys
import types
import typing

import pytest
import typer
from typer._click import core as click_core
from typer.testing import CliRunner

from envkit.cli import app

runner = CliRunner()


def _leaves() -> list[tuple[tuple[str, ...], click_core.Command]]:
    """(path, command) of every leaf command under the root, lazy groups resolved."""
    root = typer.main.get_command(app)
    found: list[tuple[tuple[str, ...], click_core.Command]] = []

    def walk(group: click_core.Command, path: tuple[str, ...]) -> None:
        ctx = click_core.Context(group, info_name=path[-1] if path else "envkit")
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, f"{' '.join((*path, name))} is listed but cannot be loaded"
            if hasattr(command, "list_commands"):  # a group (Typer's groups are Commands with children)
                walk(command, (*path, name))
            else:
                found.append(((*path, name), command))

    walk(root, ())
    return found


LEAVES = _leaves()


def _value_kind(param: click_core.Parameter) -> str | None:
    """'number' or 'choice' from the option's annotation (Optional unwrapped), else None."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    if annotation in (int, float):
        return "number"
    if typing.get_origin(annotation) is typing.Literal or (
        isinstance(annotation, type) and issubclass(annotation, enum.Enum)
    ):
        return "choice"
    return None


def _bad_values() -> list[tuple[tuple[str, ...], str, str]]:
    """(path, option, bad value) for every number or choice option of every leaf."""
    cases = []
    for path, command in LEAVES:
        for param in command.params:
            if not isinstance(param, typer.core.TyperOption) or param.is_flag or param.nargs != 1:
                continue
            flag = max(param.opts, key=len)
            kind = _value_kind(param)
            if kind == "number":
                cases.append((path, flag, "not-a-number"))
            elif kind == "choice":
                cases.append((path, flag, "no-such-choice"))
    return cases


def _assert_one_error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    shown = " ".join(args)
    assert result.exit_code == 2, f"envkit {shown}: exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"envkit {shown} raised {result.exception!r}"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"envkit {shown}: stderr {result.stderr!r}"
    assert "Traceback" not in result.output
    return lines[0]


def test_the_walk_sees_every_area() -> None:
    areas = {path[0] for path, _ in LEAVES}
    assert {"doctor", "bench", "images", "matrix", "train"} <= areas
    assert ("bench", "allreduce") in {path for path, _ in LEAVES}
    assert len(LEAVES) >= 12


@pytest.mark.parametrize("path", [path for path, _ in LEAVES], ids=" ".join)
def test_an_unknown_option_is_exit_2_and_one_error_line(path: tuple[str, ...]) -> None:
    line = _assert_one_error_line([*path, "--no-such-option"])
    assert "--no-such-option" in line and f"envkit {' '.join(path)} --help" in line


BAD_VALUES = _bad_values()


@pytest.mark.parametrize(
    ("path", "flag", "value"), BAD_VALUES, ids=[f"{' '.join(p)} {f}" for p, f, _ in BAD_VALUES]
)
def test_a_bad_number_or_choice_is_exit_2_and_one_error_line(
    path: tuple[str, ...], flag: str, value: str
) -> None:
    line = _assert_one_error_line([*path, flag, value])
    assert flag in line, line


def test_bad_values_are_found_at_all() -> None:
    flags = {(p, f) for p, f, _ in BAD_VALUES}
    assert (("bench", "memory"), "--size-mib") in flags and (("doctor",), "--timeout") in flags


def test_doctor_never_imports_the_training_package() -> None:
    code = (
        "import sys\n"
        "import envkit.cli\n"
        "sys.argv = ['envkit', 'doctor', '--help']\n"
        "try:\n"
        "    envkit.cli.main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "leaked = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))\n"
        "print('LEAKED', leaked)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Verify this machine" in proc.stdout  # the help really was printed
    assert proc.stdout.strip().splitlines()[-1] == "LEAKED []"


def test_the_root_help_lists_train_without_importing_it() -> None:
    code = (
        "import sys\n"
        "import envkit.cli\n"
        "sys.argv = ['envkit', '--help']\n"
        "try:\n"
        "    envkit.cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TRAINING', 'training' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "TRAINING False"
