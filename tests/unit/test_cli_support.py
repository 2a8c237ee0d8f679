"""The shared CLI layer: exit-code policy, one-line errors, lists, output, the console."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from envkit.cli_support import (
    PIPED_WIDTH,
    CheckFailed,
    ExitCode,
    UsageError,
    check_output_path,
    console,
    emit,
    exit_with,
    fail_usage,
    json_default,
    make_app,
    one_line,
    split_list,
    write_output,
)

runner = CliRunner()


def _app() -> typer.Typer:
    app = make_app(help="test app")

    @app.command()
    def act(
        what: str = typer.Argument(...),
        count: int = typer.Option(1, "--count"),
        out: Path = typer.Option(None, "--out"),
    ) -> None:
        if what == "usage":
            fail_usage("--what usage is wrong;\n  pick another\n(second line)")
        if what == "check":
            raise CheckFailed("the disk is full")
        if what == "interrupt":
            raise KeyboardInterrupt
        if what == "exit3":
            exit_with(3)
        if what == "fail":
            exit_with(ExitCode.FAIL)
        if what == "crash":
            raise RuntimeError("a bug")
        emit({"what": what, "count": count}, as_json=True, out=out)

    @app.command()
    def other() -> None:
        """A second command, so that `act` is a sub-command."""

    return app


APP = _app()


@pytest.mark.parametrize(
    ("what", "code", "message"),
    [
        ("ok", 0, None),
        ("usage", 2, "error: --what usage is wrong; pick another (second line)"),
        ("check", 1, "error: the disk is full"),
        ("interrupt", 130, None),
        ("exit3", 3, None),
        ("fail", 1, None),
    ],
)
def test_exit_code_policy(what: str, code: int, message: str | None) -> None:
    result = runner.invoke(APP, ["act", what])
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ([message] if message else [])


def test_a_bug_is_not_hidden_as_a_usage_error() -> None:
    result = runner.invoke(APP, ["act", "crash"])
    assert result.exit_code not in (0, 2) and isinstance(result.exception, RuntimeError)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["act", "ok", "--no-such-option"], "No such option: --no-such-option"),
        (["act", "ok", "--count", "many"], "'--count'"),
        (["act"], "Missing argument"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_parse_errors_are_one_error_line_pointing_at_help(args: list[str], needle: str) -> None:
    result = runner.invoke(APP, args)
    assert result.exit_code == ExitCode.USAGE
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and needle in line and "--help`" in line
    assert "Traceback" not in result.output and "╭" not in result.stderr  # no boxed Rich error


def test_a_bare_group_shows_its_help_without_an_empty_error_line() -> None:
    result = runner.invoke(APP, [])
    assert result.exit_code == ExitCode.USAGE
    assert "act" in result.output and "error:" not in result.output


def test_one_line() -> None:
    assert one_line("a\n  b\tc \n") == "a b c"
    assert one_line(ValueError("x\ny")) == "x y"


def test_split_list_repeats_commas_order_and_duplicates() -> None:
    assert split_list(["fp32", "bf16,FP32", " ,fp16 "], "--dtype") == ["fp32", "bf16", "fp16"]
    assert split_list("a,b", "--x") == ["a", "b"] and split_list(None, "--x") == []
    assert split_list(["A"], "--x", lower=False) == ["A"]


def test_split_list_choices_and_aliases() -> None:
    choices = ("numpy", "pytorch", "tensorflow")
    aliases = {"torch": "pytorch"}
    assert split_list(["torch,numpy", "pytorch"], "--backend", choices, aliases=aliases) == [
        "pytorch",
        "numpy",
    ]
    with pytest.raises(UsageError) as info:
        split_list(["numpy,cupy,jax"], "--backend", choices, aliases=aliases, what="backend")
    assert str(info.value) == "--backend: unknown backend cupy, jax; choose from numpy, pytorch, tensorflow"


def test_check_output_path(tmp_path: Path) -> None:
    check_output_path(None, "--out")
    check_output_path(tmp_path / "new" / "deeper" / "r.json", "--out")  # created on write
    with pytest.raises(UsageError, match="is a directory"):
        check_output_path(tmp_path, "--out")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="not a writable directory"):
        check_output_path(blocker / "r.json", "--out")


def test_write_output_and_emit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    target = tmp_path / "r.json"
    emit({"v": np.float32(1.5), "p": Path("/a")}, as_json=True, out=target)
    assert json.loads(capsys.readouterr().out) == {"v": 1.5, "p": "/a"}
    assert json.loads(target.read_text()) == {"v": 1.5, "p": "/a"}

    rendered = []
    emit({"v": 1}, as_json=False, render=lambda con: rendered.append(con))
    assert len(rendered) == 1 and capsys.readouterr().out == ""

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"--output .*cannot write"):
        write_output(blocker / "r.json", {}, "--output")
    assert json_default(b"\x00") == "b'\\x00'"


def test_console_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "97")
    assert console().width == 97
    monkeypatch.delenv("COLUMNS")
    assert console(stderr=True).width == PIPED_WIDTH  # pytest's captured streams are not terminals
    assert console(stderr=True).stderr is True
