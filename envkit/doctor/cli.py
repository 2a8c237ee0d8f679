"""`envkit doctor`: parse options, run the probes, render a table or JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from envkit.cli_support import check_output_path, console, emit, exit_with, split_list
from envkit.doctor.model import AREAS


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
    from envkit.doctor.options import DoctorOptions
    from envkit.doctor.render import print_report
    from envkit.doctor.runner import run_doctor

    opts = DoctorOptions(
        require_gpu=require_gpu,
        deep=deep,
        timeout_s=timeout,
        only=frozenset(split_list(only, "--only", AREAS, what="area")),
        skip=frozenset(split_list(skip, "--skip", AREAS, what="area")),
        deep_image=deep_image or None,
    )
    check_output_path(output, "--output")
    if as_json or not sys.stderr.isatty():
        report = run_doctor(opts)
    else:
        with console(stderr=True).status("envkit doctor: probing driver, GPUs, CUDA, frameworks, Docker ..."):
            report = run_doctor(opts)
    emit(
        report.to_dict(),
        as_json=as_json,
        out=output,
        render=lambda con: print_report(report, con),
        out_flag="--output",
    )
    exit_with(report.exit_code)
