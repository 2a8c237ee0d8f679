"""`envkit bench`: matmul, memory and all-reduce throughput, and `compare`.

Thin commands: parse, call the function that returns a result document,
render it (Rich for people, `--json` for machines), write `--out` atomically.
Exit status: 0 all measured and correct, 1 a wrong product / failed copy or
run error, 2 bad input, 130 interrupted (the best results so far are printed).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from envkit.bench.errors import BenchInputError
from envkit.bench.report import ReportError, dumps, load_document, write_document

app = typer.Typer(
    help="Honest matmul, memory and interconnect throughput (mamf-finder's method).",
    no_args_is_help=True,
)

EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # piped output (make, CI logs) would otherwise wrap tables at 80 columns
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width)


def _usage_error(message: str) -> typer.Exit:
    _console(stderr=True).print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated options and comma lists alike: --dtype fp32 --dtype bf16 == --dtype fp32,bf16."""
    if not values:
        return None
    return [v.strip().lower() for value in values for v in value.split(",") if v.strip()]


def _check_writable(path: Path | None, flag: str) -> None:
    if path is None:
        return
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _usage_error(
            f"{flag} {path}: cannot create its directory ({exc.strerror}); pick another"
        ) from None
    if path.is_dir():
        raise _usage_error(f"{flag} {path} is a directory; give a file name")


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        gpus = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise _usage_error(f"--gpus {text!r} is not a list of GPU indices; use e.g. all or 0,1") from None
    if not gpus or any(g < 0 for g in gpus):
        raise _usage_error(f"--gpus {text!r} must name GPU indices >= 0; use e.g. all or 0,1")
    return gpus


def _finish(doc: dict[str, Any], as_json: bool, out: Path | None, render: Callable[[Console], None]) -> None:
    """Write --out, print JSON or tables, and exit with the document's status."""
    if out is not None:
        write_document(doc, out)
    if as_json:
        sys.stdout.write(dumps(doc))
    else:
        console = _console()
        if doc.get("interrupted"):
            console.print("[yellow]interrupted: the results measured so far[/]")
        render(console)
        if out is not None:
            console.print(f"wrote {out}")
    if doc.get("interrupted"):
        raise typer.Exit(EXIT_INTERRUPTED)
    if doc["summary"].get("status") != "ok":
        raise typer.Exit(EXIT_FAIL)


@app.command()
def matmul(
    backend: list[str] = typer.Option(
        None,
        "--backend",
        "-b",
        help="numpy, torch, tensorflow (repeat or comma-separate). Default: torch, else numpy.",
    ),
    dtype: list[str] = typer.Option(
        None,
        "--dtype",
        "-d",
        help="fp64 fp32 tf32 fp16 bf16 fp8 (repeat or comma-separate). Default: fp32,fp64 (CPU), all (GPU).",
    ),
    device: str = typer.Option("auto", help="auto (GPU when the backend sees one), cpu or gpu."),
    gpus: str = typer.Option("all", help="GPUs to measure: all or indices such as 0,1."),
    preset: str = typer.Option("quick", help="quick, standard or exhaustive (ignored with --m/--n/--k)."),
    m: str = typer.Option(None, "--m", help="M sizes: 4096, 1024,2048 or start:stop:step (alone: squares)."),
    n: str = typer.Option(None, "--n", help="N sizes (with --m: the product M x N x K)."),
    k: str = typer.Option(None, "--k", help="K sizes (missing: as the first given)."),
    warmup: float = typer.Option(None, help="Warm-up seconds per shape (default 0.1 CPU / 0.2 GPU)."),
    min_time: float = typer.Option(
        None, help="Timed seconds per shape at least (default 0.2 CPU / 0.3 GPU)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result document as JSON on stdout."),
    out: Path = typer.Option(None, "--out", help="Write the result document (JSON) here."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG of TFLOP/s against shape per dtype."),
) -> None:
    """Matmul TFLOP/s per shape and dtype, checked against a float64 reference."""
    from envkit.bench.matmul import MatmulOptions, plan_runs, run_matmul
    from envkit.bench.shapes import PRESETS, explicit_shapes, preset_shapes

    backends = _split(backend) or (["torch"] if importlib.util.find_spec("torch") else ["numpy"])
    try:
        if preset not in PRESETS:
            raise BenchInputError(f"--preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        shapes = explicit_shapes(m, n, k) if (m or n or k) else None
        for flag, value in (("--warmup", warmup), ("--min-time", min_time)):
            if value is not None and value < 0:
                raise BenchInputError(f"{flag} must be >= 0 seconds, got {value}")
        if plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise BenchInputError("--plot needs matplotlib; pip install matplotlib (or envkit[train])")
    except BenchInputError as exc:
        raise _usage_error(str(exc)) from None
    _check_writable(out, "--out")
    _check_writable(plot, "--plot")
    options = MatmulOptions(
        backends=backends,
        dtypes=_split(dtype),
        device=device,
        gpus=_parse_gpus(gpus),
        preset=preset,
        shapes=shapes,
        warmup_s=warmup,
        min_time_s=min_time,
    )
    try:
        total = sum(len(shapes or preset_shapes(preset, t.kind)) for t, _ in plan_runs(options))
    except BenchInputError as exc:
        raise _usage_error(str(exc)) from None
    doc = _with_progress(lambda cb: run_matmul(options, on_progress=cb), as_json, total)
    if plot is not None and any(r.get("best") for r in doc["results"]):
        from envkit.bench.plot import plot_matmul

        plot_matmul(doc, plot)

    def render(console: Console) -> None:
        from envkit.bench.render import matmul_notes, matmul_summary_table

        console.print(matmul_summary_table(doc))
        for note in matmul_notes(doc):
            console.print(note, soft_wrap=True)
        if plot is not None:
            console.print(f"wrote {plot}")

    _finish(doc, as_json, out, render)


def _with_progress(
    run: Callable[[Callable | None], dict[str, Any]], as_json: bool, total: int | None
) -> dict[str, Any]:
    """Run a matmul sweep under a Rich progress bar, printing each finished shape above it."""
    from envkit.bench.render import shape_row

    err = _console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task("matmul", total=total)

    def on_progress(run_doc: dict[str, Any], shape: dict[str, Any] | None) -> None:
        if shape is None:
            progress.update(task, description=f"{run_doc['backend']} {run_doc['device']} {run_doc['dtype']}")
            return
        progress.advance(task, shape.get("skipped_shapes", 1))
        if not as_json and "m" in shape:
            progress.console.print(shape_row(run_doc, shape), soft_wrap=True)
        elif shape.get("status") == "skipped":
            progress.console.print(
                f"{run_doc['backend']} {run_doc['device']} {run_doc['dtype']}: skipped: {run_doc['message']}",
                soft_wrap=True,
            )

    try:
        with progress:
            doc = run(on_progress)
    except BenchInputError as exc:
        raise _usage_error(str(exc)) from None
    except KeyboardInterrupt:  # before the sweep began: nothing measured yet
        err.print("[yellow]interrupted before any shape was measured[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    return doc


@app.command()
def memory(
    device: str = typer.Option("auto", help="auto, cpu (numpy copy) or gpu (D2D, H2D, D2H per GPU)."),
    size_mib: int = typer.Option(
        None, "--size-mib", help="Buffer size (default 256 MiB CPU / 1024 MiB GPU)."
    ),
    gpus: str = typer.Option("all", help="GPUs to measure: all or indices such as 0,1."),
    as_json: bool = typer.Option(False, "--json", help="Print the result document as JSON on stdout."),
    out: Path = typer.Option(None, "--out", help="Write the result document (JSON) here."),
) -> None:
    """Copy bandwidth: device-to-device, host<->device (pinned, pageable); numpy copy on a CPU."""
    from envkit.bench.memory import MemoryOptions, run_memory
    from envkit.bench.render import memory_table

    if device not in ("auto", "cpu", "gpu"):
        raise _usage_error(f"--device {device!r} is not one of auto, cpu, gpu")
    _check_writable(out, "--out")
    err = _console(stderr=True)
    try:
        with err.status("memory bandwidth ...") as status:
            doc = run_memory(
                MemoryOptions(device=device, size_mib=size_mib, gpus=_parse_gpus(gpus)),
                on_progress=lambda text: status.update(text),
            )
    except BenchInputError as exc:
        raise _usage_error(str(exc)) from None
    _finish(doc, as_json, out, lambda console: console.print(memory_table(doc)))


@app.command()
def allreduce(
    nproc: int = typer.Option(None, help="Processes (default: one per GPU with NCCL, 2 with gloo)."),
    backend: str = typer.Option("auto", help="auto (nccl with GPUs, else gloo), gloo or nccl."),
    min_size: str = typer.Option("1KiB", help="Smallest message, e.g. 1KiB."),
    max_size: str = typer.Option(None, help="Largest message (default 1GiB NCCL / 64MiB gloo)."),
    min_time: float = typer.Option(0.2, help="Timed seconds per size at least."),
    as_json: bool = typer.Option(False, "--json", help="Print the result document as JSON on stdout."),
    out: Path = typer.Option(None, "--out", help="Write the result document (JSON) here."),
) -> None:
    """All-reduce algbw/busbw over torch.distributed (torchrun), with a check of the summed data."""
    from envkit.bench.allreduce import AllreduceOptions, parse_bytes, resolve, run_allreduce
    from envkit.bench.render import allreduce_table

    try:
        options = AllreduceOptions(
            nproc=nproc,
            backend=backend,
            min_bytes=parse_bytes(min_size, "min-size"),
            max_bytes=parse_bytes(max_size, "max-size") if max_size else None,
            min_time_s=min_time,
        )
        resolve(options)
    except BenchInputError as exc:
        raise _usage_error(str(exc)) from None
    _check_writable(out, "--out")
    err = _console(stderr=True)
    with err.status("all-reduce: starting torchrun ...") as status:
        doc = run_allreduce(options, on_progress=lambda text: status.update(text))

    def render(console: Console) -> None:
        console.print(allreduce_table(doc))
        if doc["summary"].get("message"):
            console.print(f"[red]{doc['summary']['message']}[/]", soft_wrap=True)

    _finish(doc, as_json, out, render)


@app.command()
def compare(
    a: Path = typer.Argument(..., help="Baseline result (JSON from --out)."),
    b: Path = typer.Argument(..., help="Result to compare with the baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Two results of one kind side by side, with b/a ratios."""
    from envkit.bench.compare import compare_documents
    from envkit.bench.render import compare_table

    try:
        result = compare_documents(load_document(a), load_document(b))
    except (ReportError, BenchInputError) as exc:
        raise _usage_error(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console = _console()
    console.print(compare_table(result, str(a), str(b)))
    if result["note"]:
        console.print(f"[yellow]note:[/] {result['note']}")
