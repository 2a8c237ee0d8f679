"""`envkit accept`: run the acceptance sequence, show it live, print and write the verdict.

Exit status: 0 accepted, 1 a step failed, 2 usage error, 130 interrupted (partial verdict).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from envkit.cli_support import UsageError, check_output_path, console, emit, split_list

QUICK_S = 60.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h', '45' (seconds) -> seconds; UsageError otherwise."""
    match = _DURATION.match(text)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"--duration {text!r} is not a positive duration; use e.g. 90s, 10m or 1h")
    unit = (match[2] or "s").lower()
    return float(match[1]) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]


def parse_tolerance(text: str) -> float:
    """'10%' or '0.1' -> 0.1; must be in (0, 1)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise UsageError(f"--tolerance {text!r} must be a fraction in (0, 1) or a percentage; e.g. 10%")
    return value


def _status_style(status: str) -> str:
    return {"ok": "green", "warn": "yellow", "fail": "bold red", "error": "bold red"}.get(status, "dim")


def render_report(doc: dict[str, Any]) -> None:
    """The verdict as a table for people."""
    out = console()
    node = doc["node"]
    table = Table(title=f"envkit accept - {node['hostname']} ({node['device']})", show_lines=False)
    for col in ("step", "status", "summary"):
        table.add_column(col, overflow="fold")
    for step in doc["steps"]:
        style = _status_style(step["status"])
        table.add_row(step["name"], f"[{style}]{step['status']}[/{style}]", step["summary"])
    out.print(table)
    verdict = doc["verdict"]
    style = {"pass": "bold green", "fail": "bold red"}.get(verdict["result"], "bold yellow")
    out.print(f"[{style}]{verdict['result'].upper()}[/{style}] {verdict['summary']}", soft_wrap=True)


class _LiveView:
    """A live table on stderr while the run goes (a terminal), else one line per finished step."""

    def __init__(self) -> None:
        self.err = console(stderr=True)
        self.live: Live | None = None
        self.current = ""
        self.soak: dict[str, Any] | None = None
        self.done: list[str] = []

    def _table(self) -> Table:
        table = Table(box=None, show_header=True)
        table.add_column("envkit accept")
        table.add_column("")
        for line in self.done:
            table.add_row(line, "")
        if self.current:
            table.add_row(f"[bold]{self.current}[/bold] ...", "")
        if self.soak:
            elapsed, total = self.soak["elapsed_s"], self.soak["duration_s"]
            table.add_row(f"  soak {elapsed:.0f}/{total:.0f} s", "")
            for d in self.soak["devices"]:
                rate = f"{d['tflops']:.3g} TFLOP/s" if d["tflops"] else "-"
                wrong = f"[bold red]{d['wrong']} wrong[/bold red]" if d["wrong"] else "all correct"
                table.add_row(f"    {d['device']}", f"{d['iterations']} products, {wrong}, {rate}")
        return table

    def __enter__(self) -> _LiveView:
        if self.err.is_terminal:
            self.live = Live(self._table(), console=self.err, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def progress(self, step: str, data: dict[str, Any]) -> None:
        if data.get("started"):
            self.current, self.soak = step, None
        elif step == "soak":
            self.soak = data
        if self.live is not None:
            self.live.update(self._table())

    def on_step(self, step: Any) -> None:
        line = f"{step.name}: {step.status} - {step.summary}"
        self.done.append(line)
        self.current, self.soak = "", None
        if self.live is not None:
            self.live.update(self._table())
        else:
            sys.stderr.write(f"accept: {' '.join(line.split())}\n")
            sys.stderr.flush()


def accept(
    device: str = typer.Option("auto", "--device", help="auto (GPUs where torch sees them), gpu or cpu."),
    duration: str = typer.Option("10m", "--duration", help="How long the GEMM soak runs: 90s, 10m, 1h."),
    quick: bool = typer.Option(False, "--quick", help=f"A {QUICK_S:.0f} s soak (overrides --duration)."),
    tolerance: str = typer.Option(
        "10%", "--tolerance", help="Allowed shortfall vs the node median and the expected figures."
    ),
    dcgm_level: int = typer.Option(2, "--dcgm-level", min=1, max=4, help="dcgmi diag -r LEVEL (1-4)."),
    train: bool = typer.Option(False, "--train", help="Also run the gpt2-124m bf16 MFU step (GPU)."),
    skip: list[str] = typer.Option([], "--skip", metavar="STEP", help="Skip these steps (comma list)."),
    cpu_workers: int = typer.Option(
        1, "--cpu-workers", min=1, help="On a CPU node: soak this many workers side by side."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON (envkit.accept/v1)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the JSON verdict to this file."),
) -> None:
    """Prove a node before users get it: doctor, GEMM soak, bandwidth, all-reduce, DCGM.

    Exit status: 0 accepted, 1 a step failed, 2 usage error, 130 interrupted.
    """
    from envkit.accept.runner import SEQUENCE, resolve_device, run_accept
    from envkit.accept.soak import SoakFaults
    from envkit.accept.steps import AcceptOptions

    device = device.strip().lower()
    if device == "cuda":
        device = "gpu"
    if device not in ("auto", "cpu", "gpu"):
        raise UsageError(f"--device {device!r} is not one of auto, cpu, gpu")
    seconds = QUICK_S if quick else parse_duration(duration)
    fraction = parse_tolerance(tolerance)
    skipped = split_list(skip, "--skip", SEQUENCE)
    check_output_path(out, "--out")
    resolved = resolve_device(device)
    if device == "gpu" and resolved == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device gpu but torch sees no CUDA GPU; use --device cpu")
    try:
        faults = SoakFaults.parse(os.environ.get("ENVKIT_ACCEPT_FAULTS"))
    except ValueError as exc:
        raise UsageError(f"ENVKIT_ACCEPT_FAULTS: {exc}") from None
    opts = AcceptOptions(
        device=resolved,
        duration_s=seconds,
        tolerance=fraction,
        dcgm_level=dcgm_level,
        train=train,
        cpu_workers=cpu_workers,
        faults=faults,
    )
    steps = tuple(s for s in SEQUENCE if s not in skipped)
    with _LiveView() as view:
        report = run_accept(opts, steps=steps, progress=view.progress, on_step=view.on_step)
    doc = report.to_dict()
    emit(doc, as_json=as_json, out=out, render=lambda _c: render_report(doc))
    raise typer.Exit(report.exit_code)
