"""`envkit bench matmul`: the measurement loop, correctness check and summary.

The loop follows mamf-finder's method: per shape a time-based warm-up, then
repeated calls each preceded by a cache flush and an output refresh, timed with
device events (GPU) or around a synchronised call (CPU). Each shape's product is
then checked on a sampled block against a float64 reference: a wrong product
is a failure and reports no FLOP/s.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from envkit.bench.errors import BenchInputError
from envkit.bench.kernels import (
    BACKENDS,
    DTYPE_ORDER,
    ERROR_BOUNDS,
    SUPPORTED,
    KernelUnsupported,
    MatmulKernel,
    NumpyKernel,
    ShapeUnsupported,
    relative_error,
    sample_indices,
)
from envkit.bench.report import new_document
from envkit.bench.shapes import Shape, preset_shapes
from envkit.bench.stats import call_rate_stats, efficiency, geometric_mean, matmul_flops, timing_stats
from envkit.bench.telemetry import GpuSampler, nvml_index_for, nvml_inventory
from envkit.matrix import load_matrix

CPU_PEAK_REASON = (
    "no dense peak is known for CPUs: it depends on the SIMD units, FMA ports and the sustained "
    "all-core clock under load, which the OS does not report honestly"
)


HOST_TIMED_GPU_NOTE = (
    "host-timed: the clock runs around an eager call and a device synchronisation, so "
    "dispatch is included; these figures are not comparable with torch's CUDA-event timing"
)


@dataclass(frozen=True)
class TimingPolicy:
    """How long to warm up and how many calls to time per shape."""

    warmup_s: float
    first_warmup_s: float  # the first shape of a run also ramps clocks and thread pools
    min_time_s: float
    min_iters: int
    max_iters: int


CPU_POLICY = TimingPolicy(warmup_s=0.1, first_warmup_s=0.3, min_time_s=0.2, min_iters=5, max_iters=50)
GPU_POLICY = TimingPolicy(warmup_s=0.2, first_warmup_s=1.0, min_time_s=0.3, min_iters=10, max_iters=200)


@dataclass(frozen=True)
class Target:
    """Where one backend runs: the CPU or one GPU."""

    backend: str
    kind: str  # "cpu" | "gpu"
    device: str  # "cpu" | "cuda:<i>"
    index: int | None = None
    name: str = "cpu"
    uuid: str | None = None
    sm_count: int | None = None  # CUDA's multiprocessor count (a MIG slice's own)


@dataclass
class MatmulOptions:
    backends: list[str] = field(default_factory=lambda: ["torch"])
    dtypes: list[str] | None = None  # None: fp32+fp64 on a CPU, everything the GPU supports
    device: str = "auto"  # auto | cpu | gpu
    gpus: list[int] | None = None  # None: every GPU
    preset: str = "quick"
    shapes: list[Shape] | None = None  # explicit shapes override the preset
    policy: TimingPolicy | None = None  # None: CPU_POLICY / GPU_POLICY
    warmup_s: float | None = None  # overrides the policy's warm-up (both first and later shapes)
    # Whole-device warm-up before the first shape on each device (mamf-finder's --warmup-s,
    # 30 s there): long enough for clocks, power and temperature to reach steady state.
    device_warmup_s: float = 0.0
    min_time_s: float | None = None  # overrides the policy's timed seconds per shape
    sample_size: int = 16


def _framework_module(backend: str) -> str:
    return {"numpy": "numpy", "torch": "torch", "tensorflow": "tensorflow"}[backend]


def kernel_class(backend: str) -> type[MatmulKernel]:
    """The kernel class of a backend, imported only when used."""
    if backend == "numpy":
        return NumpyKernel
    if backend == "torch":
        from envkit.bench.torch_kernel import TorchKernel

        return TorchKernel
    from envkit.bench.tf_kernel import TensorflowKernel

    return TensorflowKernel


def _gpu_targets(backend: str, wanted: list[int] | None) -> list[Target]:
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
        targets = []
        for i in range(count):
            props = torch.cuda.get_device_properties(i)
            uuid = str(getattr(props, "uuid", "") or "") or None
            sms = getattr(props, "multi_processor_count", None)
            targets.append(Target("torch", "gpu", f"cuda:{i}", i, props.name, uuid, sms))
    elif backend == "tensorflow":
        from envkit.bench.tf_kernel import tensorflow

        tf = tensorflow()
        gpus = tf.config.list_physical_devices("GPU")
        targets = []
        for i, gpu in enumerate(gpus):
            details = tf.config.experimental.get_device_details(gpu)
            targets.append(Target("tensorflow", "gpu", f"cuda:{i}", i, details.get("device_name", gpu.name)))
    else:
        return []
    if wanted is not None:
        missing = [i for i in wanted if i >= len(targets)]
        if missing:
            raise BenchInputError(
                f"--gpus names GPU {missing[0]} but {backend} sees {len(targets)}; "
                f"use indices 0..{len(targets) - 1}"
            )
        targets = [t for t in targets if t.index in wanted]
    return targets


def plan_runs(options: MatmulOptions) -> list[tuple[Target, str]]:
    """Validate the request and list (target, dtype) runs in order; raises BenchInputError."""
    if not options.backends:
        raise BenchInputError("no --backend given; choose from " + ", ".join(BACKENDS))
    if options.device not in ("auto", "cpu", "gpu"):
        raise BenchInputError(f"--device {options.device!r} is not one of auto, cpu, gpu")
    for dtype in options.dtypes or []:
        if dtype not in DTYPE_ORDER:
            raise BenchInputError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_ORDER)}")
    plan: list[tuple[Target, str]] = []
    for backend in dict.fromkeys(options.backends):
        if backend not in BACKENDS:
            raise BenchInputError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if importlib.util.find_spec(_framework_module(backend)) is None:
            extra = {"torch": "torch", "tensorflow": "tf"}.get(backend, "")
            raise BenchInputError(
                f"{backend} is not installed; pip install 'envkit[{extra}]' or drop --backend {backend}"
            )
        if backend == "numpy" and options.device == "gpu":
            raise BenchInputError(
                "numpy runs on the CPU only; use --backend torch or tensorflow with --device gpu"
            )
        gpu_targets = (
            [] if options.device == "cpu" or backend == "numpy" else _gpu_targets(backend, options.gpus)
        )
        if options.device == "gpu" and not gpu_targets:
            raise BenchInputError(f"--device gpu but {backend} sees no GPU; use --device cpu or a CUDA build")
        targets = gpu_targets or [Target(backend, "cpu", "cpu")]
        for target in targets:
            supported = SUPPORTED[backend][target.kind]
            if options.dtypes is None:
                dtypes = list(supported) if target.kind == "gpu" else ["fp32", "fp64"]
            else:
                unsupported = [d for d in options.dtypes if d not in supported]
                if unsupported:
                    raise BenchInputError(
                        f"dtype {unsupported[0]} is not available for {backend} on {target.kind}; "
                        f"choose from {', '.join(supported)}"
                    )
                dtypes = list(options.dtypes)
            plan.extend((target, d) for d in sorted(dtypes, key=DTYPE_ORDER.index))
    return plan


def measure_shape(
    kernel: MatmulKernel, policy: TimingPolicy, first: bool, sample_size: int
) -> dict[str, Any]:
    """Warm up, time, and check one prepared kernel; returns the shape's result."""
    shape = kernel.shape
    warmup_s = policy.first_warmup_s if first else policy.warmup_s
    warmup_calls, deadline = 0, time.perf_counter() + warmup_s
    while True:  # time-based: at least one call, then until the warm-up time is spent
        last = kernel.time_calls(1)[0]
        warmup_calls += 1
        if time.perf_counter() >= deadline:
            break
    iters = min(policy.max_iters, max(policy.min_iters, math.ceil(policy.min_time_s / max(last, 1e-9))))
    calls = kernel.time_calls(iters)
    stats = timing_stats(calls)
    rng = np.random.default_rng()
    rows = sample_indices(shape.m, sample_size, rng)
    cols = sample_indices(shape.n, sample_size, rng)
    error = relative_error(kernel.sample(rows, cols))
    bound = ERROR_BOUNDS[kernel.dtype]
    passed = error <= bound
    flops = matmul_flops(shape.m, shape.n, shape.k)
    # per shape: max, median and mean TFLOP/s over the timed calls, as mamf-finder reports them
    rates = {key: value / 1e12 for key, value in call_rate_stats(flops, calls).items()}
    return {
        "m": shape.m,
        "n": shape.n,
        "k": shape.k,
        "flops": flops,
        "warmup_calls": warmup_calls,
        "iterations": stats.n,
        "seconds": stats.to_dict(),
        "spread_pct": stats.spread_pct,
        # a wrong product is a failure, not a number
        "tflops": rates if passed else None,
        "correctness": {
            "rel_error": error if math.isfinite(error) else None,
            "bound": bound,
            "passed": passed,
            "sample": f"{len(rows)}x{len(cols)}",
        },
        "status": "ok" if passed else "fail",
        "message": None
        if passed
        else (
            f"product differs from the float64 reference: relative error "
            f"{'non-finite' if not math.isfinite(error) else f'{error:.2e}'} > bound {bound:.0e}"
        ),
    }


def _peak(target: Target, dtype: str) -> tuple[float | None, str | None]:
    if target.kind == "cpu":
        return None, CPU_PEAK_REASON
    look = load_matrix().peak_lookup(target.name, dtype, target.sm_count)
    return look.tflops, look.reason


def finish_run(run: dict[str, Any]) -> dict[str, Any]:
    """Fill a run's best shape, geometric mean, efficiency and status from its shapes."""
    good = [s for s in run["shapes"] if s["status"] == "ok"]
    if good:
        best = max(good, key=lambda s: s["tflops"]["median"])
        run["best"] = {
            "shape": f"{best['m']}x{best['n']}x{best['k']}",
            "m": best["m"],
            "n": best["n"],
            "k": best["k"],
            "tflops": best["tflops"]["median"],
            "tflops_max": best["tflops"]["max"],
        }
        run["geomean_tflops"] = geometric_mean(s["tflops"]["median"] for s in good)
        run["efficiency"] = efficiency(run["best"]["tflops"], run["peak_tflops"])
    statuses = {s["status"] for s in run["shapes"]}
    if run["status"] == "running":
        if "fail" in statuses:
            run["status"] = "fail"
        elif "error" in statuses:
            run["status"] = "error" if not good else "partial"
        elif not run["shapes"]:
            run["status"] = "interrupted"
        else:
            run["status"] = "ok"
    return run


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backend+dtype: the best result, and on several GPUs the slowest one named."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["backend"], run["dtype"]), []).append(run)
    summary_rows = []
    for (backend, dtype), members in groups.items():
        measured = [r for r in members if r.get("best")]
        row: dict[str, Any] = {"backend": backend, "dtype": dtype, "devices": len(members)}
        if measured:
            fastest = max(measured, key=lambda r: r["best"]["tflops"])
            slowest = min(measured, key=lambda r: r["best"]["tflops"])
            row["best"] = {"device": fastest["device"], **fastest["best"]}
            row["geomean_tflops"] = fastest["geomean_tflops"]
            row["efficiency"] = fastest["efficiency"]
            if len(measured) > 1:
                row["slowest"] = {
                    "device": slowest["device"],
                    "name": slowest["device_name"],
                    "tflops": slowest["best"]["tflops"],
                    "vs_fastest": slowest["best"]["tflops"] / fastest["best"]["tflops"],
                }
        summary_rows.append(row)
    failures = sum(1 for r in runs for s in r["shapes"] if s["status"] == "fail")
    errors = sum(1 for r in runs if r["status"] in ("error", "partial"))
    return {
        "status": "fail" if failures else ("error" if errors else "ok"),
        "failures": failures,
        "rows": summary_rows,
    }


ShapeCallback = Callable[[dict[str, Any], dict[str, Any] | None], None]


def run_matmul(
    options: MatmulOptions,
    on_progress: ShapeCallback | None = None,
    kernels: dict[str, type[MatmulKernel]] | None = None,
    nvml: Any = None,
) -> dict[str, Any]:
    """Run the planned matmul benchmark; returns the result document (see report.py).

    `on_progress(run, shape_result)` is called before each shape (shape_result None)
    and after it. `kernels` overrides backend kernel classes (tests inject faulty ones).
    Ctrl-C stops the sweep; the document then holds everything measured so far.
    """
    plan = plan_runs(options)
    doc = new_document("matmul", options=_options_dict(options))
    doc["context"]["frameworks"] = _framework_contexts({t.backend for t, _ in plan})
    gpu_plan = any(t.kind == "gpu" for t, _ in plan)
    inventory, driver, nvml_reason = nvml_inventory(nvml) if gpu_plan else ([], None, None)
    if gpu_plan:
        doc["context"]["gpus"] = {
            "driver": driver,
            "count": len(inventory),
            "devices": [s.to_dict() for s in inventory],
            "nvml": None if nvml_reason is None else {"unavailable": nvml_reason},
        }
    runs: list[dict[str, Any]] = doc["results"]
    warmed: set[tuple[str, str]] = set()  # (backend, device) already warmed up
    try:
        for target, dtype in plan:
            kind_policy = _policy(options, target.kind)
            shapes = options.shapes or preset_shapes(options.preset, target.kind)
            nvml_name = target.name
            nvml_index = None
            if target.kind == "gpu":
                nvml_index = nvml_index_for(target.uuid, target.index or 0, inventory)
                if nvml_index is not None:
                    nvml_name = next(s.name for s in inventory if s.index == nvml_index)
            peak, peak_reason = _peak(replace(target, name=nvml_name), dtype)
            run: dict[str, Any] = {
                "backend": target.backend,
                "device": target.device,
                "device_kind": target.kind,
                "device_name": nvml_name if target.kind == "gpu" else doc["context"]["host"]["cpu"]["model"],
                "dtype": dtype,
                "layout": None,
                "status": "running",
                "message": None,
                "shapes": [],
                "best": None,
                "geomean_tflops": None,
                "peak_tflops": peak,
                "peak_reason": peak_reason,
                "efficiency": None,
                "telemetry": None,
                "throttled": None,
            }
            runs.append(run)
            if options.device_warmup_s > 0 and (target.backend, target.device) not in warmed and shapes:
                cls = (kernels or {}).get(target.backend) or kernel_class(target.backend)
                run["device_warmup"] = device_warmup(
                    cls, shapes[0], dtype, target.device, options.device_warmup_s
                )
                if run["device_warmup"]["calls"]:
                    warmed.add((target.backend, target.device))
            sampler = GpuSampler(nvml_index, nvml=nvml).start() if nvml_index is not None else None
            try:
                _run_shapes(
                    run, target, dtype, shapes, kind_policy, options.sample_size, kernels, on_progress
                )
            except KeyboardInterrupt:
                run["status"] = "interrupted"
                raise
            finally:
                if sampler is not None:
                    summary = sampler.stop()
                    run["telemetry"] = summary.to_dict()
                    run["throttled"] = summary.throttled
                elif target.kind == "gpu":
                    run["telemetry"] = {"available": False, "reason": nvml_reason or "no NVML device matches"}
                finish_run(run)
    except KeyboardInterrupt:
        doc["interrupted"] = True
        for run in runs:
            if run["status"] == "running":
                run["status"] = "interrupted"
                finish_run(run)
    doc["summary"] = summarise_runs(runs)
    return doc


def device_warmup(
    cls: type[MatmulKernel], shape: Shape, dtype: str, device: str, seconds: float
) -> dict[str, Any]:
    """Run `shape` back to back for `seconds` so the device reaches its thermal steady state.

    Like mamf-finder's --warmup-s: done once per device, before its first measured
    shape. A dtype the device cannot run warms nothing (calls 0, with the reason).
    """
    out: dict[str, Any] = {"seconds_requested": seconds, "shape": str(shape), "dtype": dtype, "calls": 0}
    kernel = None
    start = time.perf_counter()
    try:
        kernel = cls(shape, dtype, device)
        deadline = start + seconds
        while time.perf_counter() < deadline:
            kernel.time_calls(1)
            out["calls"] += 1
    except KernelUnsupported as exc:
        out["reason"] = str(exc)
    finally:
        if kernel is not None:
            kernel.close()
    out["seconds"] = time.perf_counter() - start
    return out


def _run_shapes(
    run: dict[str, Any],
    target: Target,
    dtype: str,
    shapes: list[Shape],
    policy: TimingPolicy,
    sample_size: int,
    kernels: dict[str, type[MatmulKernel]] | None,
    on_progress: ShapeCallback | None,
) -> None:
    cls = (kernels or {}).get(target.backend) or kernel_class(target.backend)
    for i, shape in enumerate(shapes):
        if on_progress:
            on_progress(run, None)
        kernel = None
        try:
            kernel = cls(shape, dtype, target.device)
            run["layout"] = kernel.layout
            run["timing"] = kernel.timing
            if target.kind == "gpu" and kernel.timing == "host":
                run["timing_note"] = HOST_TIMED_GPU_NOTE
            result = measure_shape(kernel, policy, first=i == 0, sample_size=sample_size)
        except ShapeUnsupported as exc:
            result = {
                "m": shape.m,
                "n": shape.n,
                "k": shape.k,
                "status": "skipped",
                "tflops": None,
                "message": str(exc),
            }
        except KernelUnsupported as exc:
            run["status"], run["message"] = "skipped", str(exc)
            if on_progress:
                on_progress(run, {"status": "skipped", "skipped_shapes": len(shapes) - i})
            return
        except Exception as exc:  # out of device memory, an API this build lacks: a row, not a crash
            result = {
                "m": shape.m,
                "n": shape.n,
                "k": shape.k,
                "status": "error",
                "tflops": None,
                "message": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            }
        finally:
            if kernel is not None:
                kernel.close()
        run["shapes"].append(result)
        if on_progress:
            on_progress(run, result)


def _policy(options: MatmulOptions, kind: str) -> TimingPolicy:
    policy = options.policy or (GPU_POLICY if kind == "gpu" else CPU_POLICY)
    if options.warmup_s is not None:
        policy = replace(policy, warmup_s=options.warmup_s, first_warmup_s=options.warmup_s)
    if options.min_time_s is not None:
        policy = replace(policy, min_time_s=options.min_time_s)
    return policy


def _options_dict(options: MatmulOptions) -> dict[str, Any]:
    return {
        "backends": list(options.backends),
        "dtypes": options.dtypes,
        "device": options.device,
        "gpus": options.gpus,
        "preset": None if options.shapes else options.preset,
        "shapes": [str(s) for s in options.shapes] if options.shapes else None,
        "policy": {kind: dict(_policy(options, kind).__dict__) for kind in ("cpu", "gpu")},
        "device_warmup_s": options.device_warmup_s,
    }


def _framework_contexts(backends: set[str]) -> dict[str, Any]:
    from envkit.bench.context import numpy_context, tensorflow_context, torch_context

    out: dict[str, Any] = {"numpy": numpy_context()}
    if "torch" in backends:
        out["torch"] = torch_context()
    if "tensorflow" in backends:
        out["tensorflow"] = tensorflow_context()
    return out
