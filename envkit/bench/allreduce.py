"""`envkit bench allreduce`: all-reduce bandwidth through torch.distributed, launched with torchrun.

gloo on the CPU, NCCL on GPUs (one process per GPU). Figures follow
nccl-tests: algbw = bytes / time, busbw = algbw · 2(n-1)/n.

Across hosts (`--nnodes`, one launch per host, e.g. one `srun` task per node):
torchrun joins the hosts by c10d rendezvous at `--rdzv-endpoint` on the first
host, which says `--is-host` (c10d's own guess compares host names); every
host reports the same figures (the timings are reduced over all ranks).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.bench.errors import BenchInputError
from envkit.bench.report import new_document
from envkit.bench.stats import busbw_factor
from envkit.process import run_process
from envkit.vocab import Status

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@dataclass(frozen=True)
class AllreduceOptions:
    nproc: int | None = None  # None: one per GPU, or 2 on a CPU
    backend: str = "auto"  # auto | gloo | nccl
    min_bytes: int = KIB
    max_bytes: int | None = None  # None: 1 GiB on GPUs, 64 MiB with gloo on a CPU
    min_time_s: float = 0.2
    timeout_s: float = 900.0
    # Across hosts: nnodes > 1 needs rdzv_endpoint (host:port of the first host) and is_host.
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "envkit-allreduce"
    is_host: bool = False
    local_addr: str | None = None


def parse_bytes(text: str, name: str) -> int:
    """'1KiB', '64MiB', '1GiB', '4096' -> bytes (positive)."""
    units = {"kib": KIB, "mib": MIB, "gib": GIB, "k": KIB, "m": MIB, "g": GIB, "b": 1, "": 1}
    raw = str(text).strip().lower()
    number = raw.rstrip("kmgib")
    unit = raw[len(number) :]
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise BenchInputError(f"--{name} {text!r} is not a size; use e.g. 1KiB, 64MiB, 1GiB") from None
    if value <= 0:
        raise BenchInputError(f"--{name} must be positive, got {text!r}")
    return value


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve(options: AllreduceOptions) -> tuple[str, int, int]:
    """(backend, nproc, max_bytes) after applying defaults; BenchInputError for impossible requests."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise BenchInputError("allreduce needs torch; pip install 'envkit[torch]'")
    gpus = _gpu_count()
    backend = options.backend
    if backend == "auto":
        backend = "nccl" if gpus else "gloo"
    if backend not in ("gloo", "nccl"):
        raise BenchInputError(f"--backend {options.backend!r} is not one of auto, gloo, nccl")
    if backend == "nccl" and not gpus:
        raise BenchInputError("--backend nccl needs CUDA GPUs and this torch sees none; use --backend gloo")
    nproc = options.nproc or (gpus if backend == "nccl" else 2)
    if nproc < 1:
        raise BenchInputError(f"--nproc must be >= 1, got {nproc}")
    if backend == "nccl" and nproc > gpus:
        raise BenchInputError(f"--nproc {nproc} exceeds the {gpus} GPU(s) NCCL can use (one process per GPU)")
    max_bytes = options.max_bytes or (GIB if backend == "nccl" else 64 * MIB)
    if max_bytes < options.min_bytes:
        raise BenchInputError(f"--max-size ({max_bytes} B) is below --min-size ({options.min_bytes} B)")
    if options.nnodes < 1:
        raise BenchInputError(f"--nnodes must be >= 1, got {options.nnodes}")
    if options.nnodes > 1 and not options.rdzv_endpoint:
        raise BenchInputError(
            f"--nnodes {options.nnodes} needs --rdzv-endpoint HOST:PORT (the first host, with --is-host)"
        )
    return backend, nproc, max_bytes


def _launch_args(options: AllreduceOptions, nproc: int) -> list[str]:
    """torchrun's own arguments: one host (standalone) or a c10d rendezvous across hosts."""
    if options.nnodes == 1:
        return ["--standalone", f"--nproc-per-node={nproc}"]
    args = [
        f"--nnodes={options.nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={options.rdzv_endpoint}",
        f"--rdzv-id={options.rdzv_id}",
        f"--rdzv-conf=is_host={1 if options.is_host else 0}",
        "--max-restarts=0",
    ]
    if options.local_addr:
        args.append(f"--local-addr={options.local_addr}")
    return args


def _nccl_version() -> str:
    import torch

    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int (2.x: 21803) in old ones
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def run_allreduce(
    options: AllreduceOptions, on_progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Launch torchrun with one worker per process and collect rank 0's results."""
    backend, nproc, max_bytes = resolve(options)
    doc = new_document(
        "allreduce", options={**options.__dict__, "backend": backend, "nproc": nproc, "max_bytes": max_bytes}
    )
    world = nproc * options.nnodes
    import torch

    doc["context"]["pytorch"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": _nccl_version() if backend == "nccl" else None,
    }
    with tempfile.TemporaryDirectory(prefix="envkit-allreduce-") as tmp:
        out = Path(tmp) / "rank0.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *_launch_args(options, nproc),
            "-m",
            "envkit.bench.allreduce_worker",
            "--backend",
            backend,
            "--min-bytes",
            str(options.min_bytes),
            "--max-bytes",
            str(max_bytes),
            "--min-time",
            str(options.min_time_s),
            "--out",
            str(out),
        ]
        env = dict(os.environ)
        if backend == "gloo":
            env.setdefault("OMP_NUM_THREADS", "1")  # one compute thread per rank; the ranks share the cores
            if options.nnodes == 1 and Path("/sys/class/net/lo").exists():
                # one host: loopback always works, whereas the hostname may not resolve in a container
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")

        def on_line(line: str) -> None:
            if on_progress and line.startswith("allreduce "):
                on_progress(line.strip())

        # run_process keeps the deadline itself and kills torchrun's whole process group
        # (launcher and every rank) on timeout or Ctrl-C: a hung rank cannot hang the CLI.
        try:
            result = run_process(
                cmd, timeout_s=options.timeout_s, env=env, on_line=on_line, merge_stderr=True
            )
        except KeyboardInterrupt:
            doc["interrupted"] = True
            result = None
        log = result.stdout.splitlines() if result is not None else []
        if result is None:
            rc: int | None = 0
        elif result.timed_out:
            rc = None
        else:
            rc = result.returncode
        payload = json.loads(out.read_text()) if out.exists() else {"results": []}
    doc["results"] = payload["results"]
    failures = sum(1 for r in doc["results"] if not r["correct"])
    if failures:
        status = Status.FAIL
    elif rc == 0 and doc["results"]:
        status = Status.OK
    else:
        status = Status.ERROR
    doc["summary"] = {
        "backend": backend,
        "world_size": world,
        "nnodes": options.nnodes,
        "busbw_factor": busbw_factor(world),
        "status": str(status),
        "failures": failures,
        "peak_busbw_gbps": max((r["busbw_gbps"] or 0.0 for r in doc["results"]), default=None),
        "peak_algbw_gbps": max((r["algbw_gbps"] or 0.0 for r in doc["results"]), default=None),
    }
    tail = " | ".join([line.strip() for line in log if line.strip()][-5:])
    if rc is None:
        doc["summary"]["timed_out"] = True
        doc["summary"]["message"] = (
            f"torchrun did not finish within {options.timeout_s:g} s (a hung rank?); killed it and "
            f"its workers; raise --timeout if the sweep is merely slow" + (f": {tail}" if tail else "")
        )
    elif rc != 0:
        doc["summary"]["message"] = f"torchrun exited with {rc}: " + tail
    return doc
