"""`envkit bench`: matmul, memory and all-reduce throughput, and `compare`.

Thin commands: parse, call the function that returns a result document,
render it (Rich for people, `--json` for machines), write `--out` atomically.
Exit status (envkit.cli_support's policy): 0 all measured and correct, 1 a wrong
product / failed copy or run error, 2 bad input (one `error:` line), 130
interrupted (the best results so far are printed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from envkit.bench.report import is_ok, load_document, normalize_document
from envkit.cli_support import (
    ExitCode,
    UsageError,
    check_output_path,
    console,
    emit,
    exit_with,
    make_app,
    print_error,
    split_list,
)
from envkit.vocab import Device

app = make_app(help="Honest matmul, memory and interconnect throughput (mamf-finder's method).")

# --backend speaks the project's words; the matmul engine names PyTorch `torch` internally.
BACKENDS = ("numpy", "pytorch", "tensorflow")
BACKEND_ALIASES = {"torch": "pytorch", "tf": "tensorflow"}
ENGINE_BACKEND = {"pytorch": "torch"}
DTYPE_ALIASES = {"float64": "fp64", "float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
DEVICES = tuple(str(d) for d in Device)


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    try:
        gpus = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--gpus {text!r} is not a list of GPU indices; use e.g. all or 0,1") from None
    if not gpus or any(g < 0 for g in gpus):
        raise UsageError(f"--gpus {text!r} must name GPU indices >= 0; use e.g. all or 0,1")
    return gpus


def _device(value: str) -> str:
    device = value.strip().lower()
    device = "gpu" if device == "cuda" else device
    if device not in DEVICES:
        raise UsageError(f"--device {value!r} is not one of {', '.join(DEVICES)}; pick one")
    return device


def _finish(doc: dict[str, Any], as_json: bool, out: Path | None, render: Callable[[Console], None]) -> None:
    """Write --out, print JSON or tables, and exit with the document's status."""
    normalize_document(doc)

    def show(con: Console) -> None:
        if doc.get("interrupted"):
            con.print("[yellow]interrupted: the results measured so far[/]")
        render(con)
        if out is not None:
            con.print(f"wrote {out}")

    emit(doc, as_json=as_json, out=out, render=show)
    if doc.get("interrupted"):
        exit_with(ExitCode.INTERRUPTED)
    if not is_ok(doc):
        exit_with(ExitCode.FAIL)


@app.command()
def matmul(
    backend: list[str] = typer.Option(
        None,
        "--backend",
        "-b",
        help="numpy, pytorch (alias torch), tensorflow (repeat or comma-separate). "
        "Default: pytorch, else numpy.",
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
    warmup_s: float = typer.Option(
        0.0,
        "--warmup-s",
        help="Whole-device warm-up seconds before the first shape (mamf-finder: 30, thermal steady state).",
    ),
) -> None:
    """Matmul TFLOP/s per shape and dtype, checked against a float64 reference."""
    from envkit.bench.matmul import MatmulOptions, plan_runs, run_matmul
    from envkit.bench.shapes import PRESETS, explicit_shapes, preset_shapes

    chosen = split_list(backend, "--backend", BACKENDS, aliases=BACKEND_ALIASES, what="backend")
    if not chosen:
        chosen = ["pytorch"] if importlib.util.find_spec("torch") else ["numpy"]
    if preset not in PRESETS:
        raise UsageError(f"--preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    shapes = explicit_shapes(m, n, k) if (m or n or k) else None
    for flag, value in (("--warmup", warmup), ("--min-time", min_time), ("--warmup-s", warmup_s)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be >= 0 seconds, got {value}")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib; pip install matplotlib (or envkit[train])")
    check_output_path(out, "--out")
    check_output_path(plot, "--plot")
    options = MatmulOptions(
        backends=[ENGINE_BACKEND.get(b, b) for b in chosen],
        dtypes=split_list(dtype, "--dtype", aliases=DTYPE_ALIASES) or None,
        device=_device(device),
        gpus=_parse_gpus(gpus),
        preset=preset,
        shapes=shapes,
        warmup_s=warmup,
        min_time_s=min_time,
        device_warmup_s=warmup_s,
    )
    total = sum(len(shapes or preset_shapes(preset, t.kind)) for t, _ in plan_runs(options))
    doc = normalize_document(_with_progress(lambda cb: run_matmul(options, on_progress=cb), as_json, total))
    if plot is not None and any(r.get("best") for r in doc["results"]):
        from envkit.bench.plot import plot_matmul

        plot_matmul(doc, plot)

    def render(con: Console) -> None:
        from envkit.bench.render import matmul_notes, matmul_summary_table

        con.print(matmul_summary_table(doc))
        for note in matmul_notes(doc):
            con.print(note, soft_wrap=True)
        if plot is not None:
            con.print(f"wrote {plot}")

    _finish(doc, as_json, out, render)


def _with_progress(
    run: Callable[[Callable | None], dict[str, Any]], as_json: bool, total: int | None
) -> dict[str, Any]:
    """Run a matmul sweep under a Rich progress bar, printing each finished shape above it."""
    from envkit.bench.render import backend_word, shape_row

    err = console(stderr=True)
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
            name = backend_word(run_doc["backend"])
            progress.update(task, description=f"{name} {run_doc['device']} {run_doc['dtype']}")
            return
        progress.advance(task, shape.get("skipped_shapes", 1))
        if not as_json and "m" in shape:
            progress.console.print(shape_row(run_doc, shape), soft_wrap=True)
        elif shape.get("status") == "skipped":
            progress.console.print(
                f"{backend_word(run_doc['backend'])} {run_doc['device']} {run_doc['dtype']}: "
                f"skipped: {run_doc['message']}",
                soft_wrap=True,
            )

    try:
        with progress:
            doc = run(on_progress)
    except KeyboardInterrupt:  # before the sweep began: nothing measured yet
        err.print("[yellow]interrupted before any shape was measured[/]")
        exit_with(ExitCode.INTERRUPTED)
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

    memory_options = MemoryOptions(device=_device(device), size_mib=size_mib, gpus=_parse_gpus(gpus))
    check_output_path(out, "--out")
    with console(stderr=True).status("memory bandwidth ...") as status:
        doc = run_memory(memory_options, on_progress=lambda text: status.update(text))
    _finish(doc, as_json, out, lambda con: con.print(memory_table(doc)))


@app.command()
def allreduce(
    nproc: int = typer.Option(None, help="Processes (default: one per GPU with NCCL, 2 with gloo)."),
    backend: str = typer.Option("auto", help="auto (nccl with GPUs, else gloo), gloo or nccl."),
    min_size: str = typer.Option("1KiB", help="Smallest message, e.g. 1KiB."),
    max_size: str = typer.Option(None, help="Largest message (default 1GiB NCCL / 64MiB gloo)."),
    min_time: float = typer.Option(0.2, help="Timed seconds per size at least."),
    timeout: float = typer.Option(
        900.0,
        "--timeout",
        help="Seconds the whole sweep may take; past it torchrun and every rank are killed (exit 1).",
    ),
    nnodes: int = typer.Option(1, "--nnodes", help="Hosts taking part; run this once on each (e.g. srun)."),
    rdzv_endpoint: str = typer.Option(
        None, "--rdzv-endpoint", help="With --nnodes > 1: HOST:PORT of the first host (c10d store)."
    ),
    rdzv_id: str = typer.Option("envkit-allreduce", "--rdzv-id", help="Rendezvous id (same on all hosts)."),
    is_host: bool = typer.Option(False, "--is-host", help="This is the first host: it runs the c10d store."),
    local_addr: str = typer.Option(None, "--local-addr", help="This host's address as the others reach it."),
    as_json: bool = typer.Option(False, "--json", help="Print the result document as JSON on stdout."),
    out: Path = typer.Option(None, "--out", help="Write the result document (JSON) here."),
) -> None:
    """All-reduce algbw/busbw over torch.distributed (torchrun), with a check of the summed data.

    Across hosts: `--nnodes N --rdzv-endpoint FIRST:PORT` on every host, `--is-host` on the first
    (`envkit train sbatch allreduce` writes the Slurm job that does this).
    """
    from envkit.bench.allreduce import AllreduceOptions, parse_bytes, resolve, run_allreduce
    from envkit.bench.render import allreduce_table

    if timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout:g}")
    options = AllreduceOptions(
        nproc=nproc,
        backend=backend,
        min_bytes=parse_bytes(min_size, "min-size"),
        max_bytes=parse_bytes(max_size, "max-size") if max_size else None,
        min_time_s=min_time,
        timeout_s=timeout,
        nnodes=nnodes,
        rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id,
        is_host=is_host,
        local_addr=local_addr,
    )
    resolve(options)
    check_output_path(out, "--out")
    with console(stderr=True).status("all-reduce: starting torchrun ...") as status:
        doc = run_allreduce(options, on_progress=lambda text: status.update(text))

    def render(con: Console) -> None:
        con.print(allreduce_table(doc))
        if doc["summary"].get("message"):
            con.print(f"[red]{doc['summary']['message']}[/]", soft_wrap=True)

    if as_json and doc["summary"].get("message"):
        print_error(doc["summary"]["message"])  # stdout holds the JSON; say why on stderr
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

    result = compare_documents(load_document(a), load_document(b))

    def render(con: Console) -> None:
        con.print(compare_table(result, str(a), str(b)))
        if result["note"]:
            con.print(f"[yellow]note:[/] {result['note']}")

    emit(result, as_json=as_json, render=render)
