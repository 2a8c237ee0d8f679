"""The CLI layer every `envkit` command shares: exit codes, errors, lists, output, the Console.

Policy, the same in every area (a user's script may rely on it):

- exit 0: done, and every check passed;
- exit 1: the machine or a check failed (`CheckFailed`, or a command's own verdict);
- exit 2: the user's input is wrong (`UsageError`, or any Click/Typer parsing error),
  printed as ONE line `error: <what is wrong>; <how to fix it>` on stderr;
- exit 130: interrupted (Ctrl-C / SIGINT).

Commands raise `UsageError`/`CheckFailed`; `EnvkitGroup` (the class of every envkit
Typer app) turns them into that line and status, so no command prints its own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from typer._click.exceptions import NoArgsIsHelpError
from typer.core import TyperGroup

from envkit.atomic import atomic_write_text


class ExitCode(IntEnum):
    OK = 0
    FAIL = 1
    USAGE = 2
    INTERRUPTED = 130


class UsageError(Exception):
    """The user's input is wrong. The message names the input and the fix (exit 2)."""


class CheckFailed(Exception):
    """The machine or a check failed; the message says what (exit 1)."""


def fail_usage(message: str) -> NoReturn:
    """Raise the usage error `message` (one line: what is wrong; how to fix it)."""
    raise UsageError(message)


def one_line(message: object) -> str:
    """Collapse a message onto one line (tracebacks and multi-line errors never reach a user)."""
    return " ".join(str(message).split())


def print_error(message: object) -> None:
    """Print `error: <message>` as a single line on stderr."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


def _parse_error_message(exc: Exception) -> str:
    """Typer/Click's parsing error as one line, pointing at the command's --help."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and getattr(exc, "exit_code", 1) == ExitCode.USAGE:
        message = f"{one_line(message).rstrip('.')}; see `{ctx.command_path} --help`"
    return message


class EnvkitGroup(TyperGroup):
    """A Typer group whose `main` applies the exit-code policy above."""

    def main(self, args: Sequence[str] | None = None, *pargs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        standalone = kwargs.pop("standalone_mode", True)
        try:
            rv = super().main(args, *pargs, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # a bare group: its help (already shown by Rich), no error line
            text = exc.format_message()
            if text.strip():
                sys.stderr.write(text.rstrip("\n") + "\n")
            code = ExitCode.USAGE
        except UsageError as exc:
            print_error(exc)
            code = ExitCode.USAGE
        except CheckFailed as exc:
            print_error(exc)
            code = ExitCode.FAIL
        except (typer.Abort, KeyboardInterrupt):
            code = ExitCode.INTERRUPTED
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.TyperException as exc:  # Typer's (vendored Click's) parsing errors: exit 2
            print_error(_parse_error_message(exc))
            code = getattr(exc, "exit_code", ExitCode.USAGE)
        else:
            code = rv if isinstance(rv, int) else ExitCode.OK
        if not standalone:
            return int(code)
        sys.exit(int(code))


def make_app(**kwargs: Any) -> typer.Typer:
    """A Typer app with envkit's defaults: the exit-code policy, no completion, no pretty tracebacks."""
    kwargs.setdefault("cls", EnvkitGroup)
    kwargs.setdefault("no_args_is_help", True)
    kwargs.setdefault("add_completion", False)
    kwargs.setdefault("pretty_exceptions_enable", False)
    return typer.Typer(**kwargs)


def split_list(
    values: str | Iterable[str] | None,
    flag: str,
    choices: Iterable[str] | None = None,
    *,
    aliases: dict[str, str] | None = None,
    lower: bool = True,
    what: str = "value",
) -> list[str]:
    """'--x a --x b,c' -> ['a', 'b', 'c'] (order kept, duplicates dropped).

    With `choices`, an unknown value is a UsageError naming the flag, the value (called
    `what`: "area", "backend") and the choices; `aliases` maps accepted older spellings
    onto choices first.
    """
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    seen: list[str] = []
    for item in items:
        for part in str(item).split(","):
            name = part.strip()
            if lower:
                name = name.lower()
            if not name:
                continue
            name = (aliases or {}).get(name, name)
            if name not in seen:
                seen.append(name)
    if choices is not None:
        allowed = list(choices)
        unknown = [name for name in seen if name not in allowed]
        if unknown:
            raise UsageError(f"{flag}: unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return seen


PIPED_WIDTH = 160


def console(stderr: bool = False) -> Console:
    """The Rich console every command prints through (stdout or stderr), no syntax highlighting.

    Width: COLUMNS if set, the terminal's when there is one, else 160 columns, so that
    tables piped into make or a CI log are not wrapped at Rich's default of 80. Built on
    each call: the stream (and whether it is a terminal) may change between commands.
    """
    stream = sys.stderr if stderr else sys.stdout
    width = os.environ.get("COLUMNS")
    if width and width.isdigit():
        columns: int | None = int(width)
    else:
        isatty = getattr(stream, "isatty", None)
        columns = None if isatty is not None and isatty() else PIPED_WIDTH
    return Console(stderr=stderr, highlight=False, width=columns)


def json_default(value: Any) -> Any:
    """JSON for the values result documents carry besides plain ones: numpy scalars, paths."""
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)  # a stray bytes or ctypes value must not lose the whole document


def to_json(doc: Any) -> str:
    """`doc` as indented JSON (no trailing newline), the form --json and --out share."""
    return json.dumps(doc, indent=2, default=json_default)


def check_output_path(path: Path | None, flag: str) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"{flag} {path}: {probe} is not a writable directory; choose another path")


def write_output(path: Path, doc: Any, flag: str = "--out") -> None:
    """Write `doc` as JSON to `path` atomically; an unwritable path is a usage error."""
    try:
        atomic_write_text(path, to_json(doc) + "\n")
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write ({exc.strerror}); choose another path") from None


def emit(
    doc: Any,
    *,
    as_json: bool,
    out: Path | None = None,
    render: Callable[[Console], None] | None = None,
    out_flag: str = "--out",
) -> None:
    """Write `doc` to `out` (atomically) if given, then print it as JSON or through `render`."""
    if out is not None:
        write_output(out, doc, out_flag)
    if as_json or render is None:
        typer.echo(to_json(doc))
    else:
        render(console())


def exit_with(code: int | ExitCode) -> NoReturn:
    """End the command with `code` (0 ok, 1 failed check)."""
    raise typer.Exit(int(code))
