"""`envkit doctor`: parse options, run the probes, render a table or JSON."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import typer

from envkit.doctor.model import AREAS


def _areas(values: list[str], flag: str) -> frozenset[str]:
    """'--only gpu --only host' or '--only gpu,host' -> {'gpu', 'host'}; unknown names are usage errors."""
    names = {v.strip().lower() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(names - set(AREAS))
    if unknown:
        raise typer.BadParameter(
            f"unknown area {', '.join(unknown)}; choose from {', '.join(AREAS)}", param_hint=flag
        )
    return frozenset(names)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def doctor(
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON (schema: envkit/data/doctor.schema.json)."
    ),
    require_gpu: bool = typer.Option(
        False, "--require-gpu", help="Fail unless at least one NVIDIA GPU is usable."
    ),
    deep: bool = typer.Option(
        False,
        "--deep",
        help="Also run a --gpus all container smoke test and `dcgmi diag -r 1` where possible.",
    ),
    only: list[str] = typer.Option(
        [], "--only", metavar="AREA", help=f"Run only these areas ({', '.join(AREAS)})."
    ),
    skip: list[str] = typer.Option([], "--skip", metavar="AREA", help="Skip these areas."),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, help="Seconds each framework probe may take."),
    deep_image: str = typer.Option("", "--deep-image", help="Image for the --deep GPU container test."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Also write the JSON report to this file."
    ),
) -> None:
    """Verify this machine's deep-learning stack: driver, GPUs, CUDA, PyTorch, TensorFlow, Docker.

    Exit status: 0 usable, 1 a failing check, 2 usage error.
    """
    from rich.console import Console

    from envkit.doctor.options import DoctorOptions
    from envkit.doctor.render import print_report
    from envkit.doctor.runner import run_doctor

    opts = DoctorOptions(
        require_gpu=require_gpu,
        deep=deep,
        timeout_s=timeout,
        only=_areas(only, "--only"),
        skip=_areas(skip, "--skip"),
        deep_image=deep_image or None,
    )
    err = Console(stderr=True)
    if as_json or not sys.stderr.isatty():
        report = run_doctor(opts)
    else:
        with err.status("envkit doctor: probing driver, GPUs, CUDA, frameworks, Docker ..."):
            report = run_doctor(opts)
    # default=str: a stray bytes or ctypes value in some details must not lose the whole report
    text = json.dumps(report.to_dict(), indent=2, default=str)
    if output is not None:
        try:
            _write_atomically(output, text + "\n")
        except OSError as exc:
            err.print(
                f"envkit doctor: cannot write {output}: {exc.strerror}; choose another --output path",
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
    if as_json:
        typer.echo(text)
    else:
        print_report(report, Console())
    raise typer.Exit(report.exit_code)
