"""The steps of an acceptance run. Each returns a `Step`; none raises for a machine fault.

Steps that need a GPU say `not_applicable` on a CPU node with the reason; the CPU
node still runs what applies to it (doctor, a soak with checked products, host
memory bandwidth, a gloo all-reduce), so the sequence itself is tested in CI.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envkit.accept.report import Step
from envkit.accept.soak import (
    DeviceSoak,
    SoakFaults,
    SoakPlan,
    judge_soak,
    plan_soak,
    run_soak,
    status_of,
)
from envkit.vocab import Status

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class AcceptOptions:
    """What one acceptance run does."""

    device: str = "auto"  # auto | cpu | gpu (resolved before the run)
    duration_s: float = 600.0
    tolerance: float = 0.10
    dcgm_level: int = 2
    train: bool = False
    cpu_workers: int = 1
    soak_shape: int | None = None
    allreduce_max_bytes: int | None = None
    timeout_s: float = 900.0
    faults: SoakFaults = field(default_factory=SoakFaults)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "duration_s": self.duration_s,
            "tolerance": self.tolerance,
            "dcgm_level": self.dcgm_level,
            "train": self.train,
            "cpu_workers": self.cpu_workers,
            "soak_shape": self.soak_shape,
        }


def _timed(name: str, fn: Callable[[], Step]) -> Step:
    start = time.perf_counter()
    try:
        step = fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a step that crashes is an error row, never the end of the sequence
        step = Step(name, Status.ERROR, " ".join(f"{type(exc).__name__}: {exc}".split()))
    step.elapsed_s = time.perf_counter() - start
    return step


def step_doctor(opts: AcceptOptions) -> Step:
    """doctor must say the node is usable (with --require-gpu on a GPU node)."""
    from envkit.doctor.options import DoctorOptions
    from envkit.doctor.runner import run_doctor

    report = run_doctor(DoctorOptions(require_gpu=opts.device == "gpu"))
    failing = [f"{c.area}/{c.name}: {c.evidence}" for c in report.failing()]
    status = Status.FAIL if failing else Status.OK
    return Step(
        "doctor",
        status,
        report.verdict(),
        findings=[{"status": "fail", "message": m} for m in failing],
        details={"counts": report.counts()},
    )


def _slowdowns(samples_by_gpu: dict[int, list[Any]]) -> dict[str, list[str]]:
    """Problem clock-event reasons seen under load, per GPU (SwPowerCap etc. are expected)."""
    from envkit.nvml import problem_reasons

    out: dict[str, list[str]] = {}
    for index, samples in samples_by_gpu.items():
        reasons: set[str] = set()
        for s in samples:
            if s.throttle_mask is not None:
                reasons.update(problem_reasons(s.throttle_mask))
        out[f"gpu{index}"] = sorted(reasons)
    return out


class _TelemetryThread:
    """Samples every GPU through NVML once a second while the soak runs (none where NVML is absent)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: dict[int, list[Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from envkit.nvml import nvml_session, sample_gpus

        try:
            with nvml_session() as nvml:
                while not self._stop.wait(self.interval_s):
                    for sample in sample_gpus(nvml):
                        self.samples.setdefault(sample.index, []).append(sample)
        except Exception:  # telemetry is evidence, not a precondition: doctor reports a broken NVML
            return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[int, list[Any]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples


def soak_plan(opts: AcceptOptions) -> SoakPlan:
    """The soak's plan (devices, dtype, size); imports the framework it will use."""
    return plan_soak(opts.device, cpu_workers=opts.cpu_workers, shape=opts.soak_shape)


def step_soak(opts: AcceptOptions, progress: Progress | None = None) -> Step:
    """Every device multiplies at once for the soak's duration; every product checked."""
    plan = soak_plan(opts)
    sampler = _TelemetryThread() if plan.device == "gpu" else None
    devices: list[DeviceSoak] = []

    def on_window(current: list[DeviceSoak], elapsed: float) -> None:
        devices[:] = current
        if progress is not None:
            progress(
                "soak",
                {
                    "elapsed_s": elapsed,
                    "duration_s": opts.duration_s,
                    "devices": [
                        {
                            "device": d.device,
                            "iterations": d.iterations,
                            "wrong": d.wrong,
                            "tflops": d.windows_tflops[-1] if d.windows_tflops else None,
                        }
                        for d in current
                    ],
                },
            )

    if sampler is not None:
        sampler.start()
    try:
        devices = run_soak(plan, opts.duration_s, faults=opts.faults, on_window=on_window)
    finally:
        samples = sampler.stop() if sampler is not None else {}
    findings = judge_soak(devices, opts.tolerance, _slowdowns(samples) if samples else None)
    status = status_of(findings)
    rates = [d.median_tflops for d in devices if d.median_tflops]
    summary = (
        f"{len(devices)} {plan.device} device(s), {plan.dtype} {plan.shape}³, "
        f"{sum(d.iterations for d in devices)} products checked, "
        f"median {statistics.median(rates):.3g} TFLOP/s per device"
        if rates
        else "no throughput measured"
    )
    if findings and status != Status.OK:
        summary = "; ".join(f.message for f in findings if f.status == status)
    return Step(
        "soak",
        status,
        summary,
        findings=[f.to_dict() for f in findings],
        details={"plan": plan.__dict__, "devices": [d.to_dict() for d in devices]},
    )


def expected_figure(kind: str, gpu_name: str | None) -> tuple[float | None, str | None]:
    """(GB/s, source) the matrix's accept_expected floors give `kind` (hbm, p2p, busbw) on this GPU."""
    from envkit.matrix import load_matrix

    if not gpu_name:
        return None, None
    matrix = load_matrix()
    row = matrix.gpu(gpu_name)
    table = matrix.raw.get("accept_expected") or {}
    for floor in table.get("gpus", []):
        if row is not None and floor.get("name") == row.name:
            value = floor.get(f"{kind}_gbps")
            return (float(value) if value else None), table.get("source")
    return None, None


def _against(measured: float, expected: float | None, tolerance: float, what: str) -> tuple[Status, str]:
    if expected is None:
        return Status.OK, f"{what} {measured:.1f} GB/s (no expected figure for this device in the matrix)"
    ratio = measured / expected
    status = Status.OK if ratio >= 1.0 - tolerance else Status.FAIL
    return status, f"{what} {measured:.1f} GB/s = {ratio:.0%} of the expected {expected:.0f} GB/s"


def step_memory(opts: AcceptOptions) -> Step:
    """Memory bandwidth per GPU (device-to-device copy), or host memory on a CPU node."""
    from envkit.bench.memory import MemoryOptions, run_memory

    doc = run_memory(MemoryOptions(device=opts.device, size_mib=None if opts.device == "gpu" else 256))
    findings: list[dict[str, str]] = []
    lines = []
    for r in doc["results"]:
        if r["test"] not in ("d2d", "host_copy"):
            continue
        if not r["correct"]:
            findings.append({"status": "fail", "message": f"{r['device']}: {r['message']}"})
            continue
        measured = r["gbps"]["median"]
        expected, _ = expected_figure("hbm", r["device_name"]) if r["test"] == "d2d" else (None, None)
        status, line = _against(measured, expected, opts.tolerance, f"{r['device']} {r['test']}")
        lines.append(line)
        if status != Status.OK:
            findings.append({"status": str(status), "message": line})
    status = Status.FAIL if findings else Status.OK
    return Step(
        "memory", status, "; ".join(lines) or "nothing measured", findings, {"results": doc["results"]}
    )


def peer_matrix(nbytes: int = 256 * 1024**2, iters: int = 5) -> list[dict[str, Any]]:
    """GPU→GPU copy bandwidth for every ordered pair, each copy verified (p2pBandwidthLatencyTest-like)."""
    import torch

    count = torch.cuda.device_count()
    results = []
    for src in range(count):
        source = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=f"cuda:{src}")
        for dst in range(count):
            if src == dst:
                continue
            target = torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{dst}")
            target.copy_(source)  # warm-up (and P2P mapping set-up)
            torch.cuda.synchronize(src)
            torch.cuda.synchronize(dst)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            with torch.cuda.device(src):
                start.record()
                for _ in range(iters):
                    target.copy_(source, non_blocking=True)
                end.record()
            torch.cuda.synchronize(src)
            torch.cuda.synchronize(dst)
            seconds = start.elapsed_time(end) / 1000 / iters
            correct = bool(torch.equal(target.to(f"cuda:{src}"), source))
            results.append(
                {
                    "src": src,
                    "dst": dst,
                    "gbps": nbytes / seconds / 1e9,
                    "correct": correct,
                    "p2p": bool(torch.cuda.can_device_access_peer(src, dst)),
                }
            )
            del target
    return results


def step_peer(opts: AcceptOptions) -> Step:
    """Every ordered GPU pair's copy bandwidth against the interconnect's expected figure."""
    if opts.device != "gpu":
        return Step("peer", Status.NOT_APPLICABLE, "a CPU node has no GPU peers")
    import torch

    if torch.cuda.device_count() < 2:
        return Step("peer", Status.NOT_APPLICABLE, "one GPU: no peer to copy to")
    pairs = peer_matrix()
    name = torch.cuda.get_device_name(0)
    expected, source = expected_figure("p2p", name)
    findings = []
    for p in pairs:
        if not p["correct"]:
            findings.append({"status": "fail", "message": f"gpu{p['src']}->gpu{p['dst']}: copy differs"})
            continue
        status, line = _against(p["gbps"], expected, opts.tolerance, f"gpu{p['src']}->gpu{p['dst']}")
        if status != Status.OK:
            findings.append({"status": str(status), "message": line})
    worst = min(p["gbps"] for p in pairs)
    summary = f"{len(pairs)} ordered pairs, slowest {worst:.1f} GB/s" + (
        f" (expected {expected:.0f} GB/s, {source})" if expected else " (no expected figure in the matrix)"
    )
    status = Status.FAIL if findings else Status.OK
    return Step("peer", status, summary, findings, {"pairs": pairs})


def step_allreduce(opts: AcceptOptions) -> Step:
    """All-reduce busbw (NCCL on GPUs, gloo on a CPU), every size checked exactly."""
    from envkit.bench.allreduce import MIB, AllreduceOptions, run_allreduce

    backend = "nccl" if opts.device == "gpu" else "gloo"
    max_bytes = opts.allreduce_max_bytes or (None if backend == "nccl" else 16 * MIB)
    doc = run_allreduce(
        AllreduceOptions(backend=backend, max_bytes=max_bytes, timeout_s=min(opts.timeout_s, 600.0))
    )
    summary = doc["summary"]
    wrong = [r for r in doc["results"] if not r["correct"]]
    findings = [{"status": "fail", "message": f"{r['bytes']} B: the sum is wrong"} for r in wrong]
    if summary["status"] == "error":
        findings.append({"status": "error", "message": summary.get("message", "torchrun failed")})
    peak = summary.get("peak_busbw_gbps") or 0.0
    line = (
        f"{backend} x{summary['world_size']}: peak busbw {peak:.2f} GB/s, {len(doc['results'])} sizes checked"
    )
    if backend == "nccl" and not findings:
        import torch

        expected, _ = expected_figure("busbw", torch.cuda.get_device_name(0))
        status, line2 = _against(peak, expected, opts.tolerance, "peak busbw")
        line = f"{line}; {line2}"
        if status != Status.OK:
            findings.append({"status": str(status), "message": line2})
    status = (
        Status.ERROR
        if any(f["status"] == "error" for f in findings)
        else (Status.FAIL if findings else Status.OK)
    )
    return Step("allreduce", status, line, findings, {"results": doc["results"], "summary": summary})


def step_dcgm(opts: AcceptOptions) -> Step:
    """DCGM's own diagnostics at --dcgm-level, where DCGM is installed."""
    if opts.device != "gpu":
        return Step("dcgm", Status.NOT_APPLICABLE, "DCGM diagnoses GPUs; this is a CPU node")
    from envkit.accept.dcgm import run_dcgm_diag

    outcome = run_dcgm_diag(opts.dcgm_level, timeout_s=opts.timeout_s)
    return Step("dcgm", outcome.status, outcome.summary, details=outcome.to_dict())


def step_train(opts: AcceptOptions) -> Step:
    """Optional: the gpt2-124m bf16 MFU check (a subprocess: envkit never imports training)."""
    if not opts.train:
        return Step("train", Status.NOT_APPLICABLE, "not asked for (--train)")
    if opts.device != "gpu":
        return Step("train", Status.NOT_APPLICABLE, "the MFU check needs a GPU")
    import json
    import sys
    import tempfile
    from pathlib import Path

    from envkit.process import run_process

    with tempfile.TemporaryDirectory(prefix="envkit-accept-train-") as tmp:
        out = Path(tmp) / "train.json"
        result = run_process(
            [
                sys.executable,
                "-m",
                "training",
                "pretrain",
                "--preset",
                "gpt2-124m",
                "--json",
                f"run_dir={tmp}/run",
                "max_steps=60",
            ],
            timeout_s=opts.timeout_s,
        )
        if not result.ok:
            return Step("train", Status.FAIL, f"the training step failed: {result.tail()}")
        try:
            doc = json.loads(result.stdout[result.stdout.find("{") :])
        except ValueError:
            doc = {}
        out.write_text(result.stdout)
    mfu = doc.get("mfu") or (doc.get("throughput") or {}).get("mfu")
    return Step("train", Status.OK, f"gpt2-124m bf16: MFU {mfu}" if mfu else "gpt2-124m ran", details=doc)


STEP_FUNCTIONS: dict[str, Callable[..., Step]] = {
    "doctor": step_doctor,
    "soak": step_soak,
    "memory": step_memory,
    "peer": step_peer,
    "allreduce": step_allreduce,
    "dcgm": step_dcgm,
    "train": step_train,
}


def run_step(name: str, opts: AcceptOptions, progress: Progress | None = None) -> Step:
    """Run one named step, timing it and turning a crash into an `error` step."""
    fn = STEP_FUNCTIONS[name]
    if name == "soak":
        return _timed(name, lambda: fn(opts, progress))
    return _timed(name, lambda: fn(opts))
