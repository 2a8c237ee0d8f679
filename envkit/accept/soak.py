"""The GEMM soak: every device multiplies at once for a while, every product is checked.

What a sustained load reveals and a short benchmark hides (the reason acceptance
runs such as gpu-burn exist): silent wrong results from a marginal GPU, one GPU
slower than its siblings (a bad slot, a failing fan, a lower power limit), and
throughput that decays as the node heats up. The inputs stay fixed for the whole
soak, so the product's sampled block is compared against one float64 reference
computed on the host from the very same (rounded) inputs.
"""

from __future__ import annotations

import importlib.util
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envkit.bench.kernels import ERROR_BOUNDS
from envkit.bench.stats import matmul_flops
from envkit.vocab import Status

SAMPLE = 48  # rows and columns of the product checked every iteration


@dataclass(frozen=True)
class SoakFaults:
    """Faults a test injects to prove the verdict catches them (never set in production).

    `wrong`: devices whose product gets one corrupted element every iteration (a silent
    data corruption); `slow`: device -> extra time per iteration, as a fraction of the
    iteration's own time (0.5: the device runs at 1/1.5 of its speed).
    """

    wrong: frozenset[int] = frozenset()
    slow: dict[int, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> SoakFaults:
        """'wrong=0;slow=1:0.5' (the ENVKIT_ACCEPT_FAULTS test hook) -> SoakFaults."""
        wrong: set[int] = set()
        slow: dict[int, float] = {}
        for part in (text or "").split(";"):
            key, _, value = part.partition("=")
            key = key.strip()
            if not key:
                continue
            if key == "wrong":
                wrong.update(int(v) for v in value.split(",") if v.strip())
            elif key == "slow":
                for item in value.split(","):
                    device, _, factor = item.partition(":")
                    slow[int(device)] = float(factor or 1.0)
            else:
                raise ValueError(f"unknown fault {key!r} (wrong=I,...;slow=I:F,...)")
        return cls(frozenset(wrong), slow)


@dataclass
class DeviceSoak:
    """What one device did during the soak."""

    device: str  # "gpu0", "gpu1", ... or "cpu0", ...
    name: str
    dtype: str
    shape: int
    iterations: int = 0
    wrong: int = 0
    max_rel_error: float = 0.0
    first_wrong_iteration: int | None = None
    windows_tflops: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_tflops(self) -> float | None:
        return statistics.median(self.windows_tflops) if self.windows_tflops else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "name": self.name,
            "dtype": self.dtype,
            "shape": self.shape,
            "iterations": self.iterations,
            "wrong_products": self.wrong,
            "first_wrong_iteration": self.first_wrong_iteration,
            "max_rel_error": self.max_rel_error,
            "error_bound": ERROR_BOUNDS.get(self.dtype),
            "tflops_per_window": [round(t, 4) for t in self.windows_tflops],
            "median_tflops": None if self.median_tflops is None else round(self.median_tflops, 4),
            "error": self.error,
        }


@dataclass(frozen=True)
class Finding:
    """One reason for a step's status, e.g. ('fail', 'gpu1 at 0.52x the node median')."""

    status: Status
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"status": str(self.status), "message": self.message}


def judge_soak(
    devices: list[DeviceSoak],
    tolerance: float,
    slowdowns: dict[str, list[str]] | None = None,
) -> list[Finding]:
    """The soak's findings: wrong products, a slow device, decay, hardware/thermal slowdown.

    - any wrong product: fail;
    - a device whose median throughput is below (1 - tolerance) of the node's median: fail;
    - the median throughput of the soak's last third below (1 - tolerance) of its first
      third's: warn (medians, so one noisy window does not raise it);
    - a problem clock-event reason seen under load (not SwPowerCap, which is normal): fail.
    """
    findings: list[Finding] = []
    for d in devices:
        if d.error:
            findings.append(Finding(Status.ERROR, f"{d.device}: the soak stopped: {d.error}"))
        if d.wrong:
            bound = ERROR_BOUNDS.get(d.dtype)
            findings.append(
                Finding(
                    Status.FAIL,
                    f"{d.device}: {d.wrong} of {d.iterations} products wrong (max relative error "
                    f"{d.max_rel_error:.2e} > bound {bound:.0e}, "
                    f"first at iteration {d.first_wrong_iteration})",
                )
            )
    rates = {d.device: d.median_tflops for d in devices if d.median_tflops}
    if len(rates) >= 2:
        node_median = statistics.median(rates.values())
        for device, rate in rates.items():
            ratio = rate / node_median
            if ratio < 1.0 - tolerance:
                findings.append(
                    Finding(
                        Status.FAIL,
                        f"{device}: {rate:.3g} TFLOP/s is {ratio:.2f}x the node median {node_median:.3g} "
                        f"(tolerance {tolerance:.0%}): slower than its siblings",
                    )
                )
    for d in devices:
        windows = d.windows_tflops[1:]  # window 0 holds clock ramp-up and allocator warm-up
        if len(windows) >= 4:
            third = max(1, len(windows) // 3)
            early, late = statistics.median(windows[:third]), statistics.median(windows[-third:])
            if late < (1.0 - tolerance) * early:
                findings.append(
                    Finding(
                        Status.WARN,
                        f"{d.device}: throughput decayed from {early:.3g} to {late:.3g} TFLOP/s "
                        f"(median of the first vs the last third of the soak): cooling or power delivery?",
                    )
                )
    for device, reasons in sorted((slowdowns or {}).items()):
        if reasons:
            findings.append(
                Finding(
                    Status.FAIL,
                    f"{device}: clocks slowed by {', '.join(reasons)} under load (check cooling)",
                )
            )
    return findings


def status_of(findings: list[Finding]) -> Status:
    """The worst status among findings (ok when there are none)."""
    order = [Status.OK, Status.WARN, Status.FAIL, Status.ERROR]
    worst = Status.OK
    for f in findings:
        if f.status in order and order.index(f.status) > order.index(worst):
            worst = f.status
    return worst


class _Worker:
    """One device's soak loop (a thread; torch and numpy release the GIL inside matmul)."""

    def __init__(
        self,
        result: DeviceSoak,
        multiply: Callable[[], Any],
        sample_block: Callable[[Any], np.ndarray],
        corrupt: Callable[[Any], None] | None,
        reference: np.ndarray,
        slow: float,
    ) -> None:
        self.result = result
        self.multiply = multiply
        self.sample_block = sample_block
        self.corrupt = corrupt
        self.reference = reference
        self.ref_norm = float(np.linalg.norm(reference)) or 1.0
        self.slow = slow
        self.flops = matmul_flops(result.shape, result.shape, result.shape)
        self.thread: threading.Thread | None = None
        self.window_flops = 0.0

    def run(self, stop: threading.Event, end: float, window_s: float) -> None:
        r = self.result
        window_start = time.perf_counter()
        try:
            while not stop.is_set() and time.perf_counter() < end:
                t0 = time.perf_counter()
                product = self.multiply()
                if self.corrupt is not None:
                    self.corrupt(product)
                block = self.sample_block(product)  # synchronises the device
                if self.slow:
                    time.sleep(self.slow * (time.perf_counter() - t0))
                r.iterations += 1
                self.window_flops += self.flops
                err = (
                    float(np.linalg.norm(block - self.reference)) / self.ref_norm
                    if np.all(np.isfinite(block))
                    else float("inf")
                )
                r.max_rel_error = max(r.max_rel_error, err)
                if err > ERROR_BOUNDS.get(r.dtype, 1e-2):
                    r.wrong += 1
                    if r.first_wrong_iteration is None:
                        r.first_wrong_iteration = r.iterations
                now = time.perf_counter()
                if now - window_start >= window_s:
                    r.windows_tflops.append(self.window_flops / (now - window_start) / 1e12)
                    self.window_flops, window_start = 0.0, now
            now = time.perf_counter()
            # a last partial window counts only if it is long enough to mean something
            if self.window_flops and now - window_start >= 0.5 * window_s:
                r.windows_tflops.append(self.window_flops / (now - window_start) / 1e12)
        except Exception as exc:  # a CUDA error on one device must not hide the others' results
            r.error = " ".join(f"{type(exc).__name__}: {exc}".split())


def _sample_indices(n: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.sort(rng.choice(n - 1, size=min(SAMPLE, n) - 1, replace=False))
    return np.append(idx, n - 1)  # always include the last row/column (edge tiles)


def _torch_worker(device: str, index: int, dtype: str, n: int, faults: SoakFaults, seed: int) -> _Worker:
    import torch

    tdtype = {
        "fp32": torch.float32,
        "tf32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }[dtype]
    dev = torch.device("cuda", index) if device == "gpu" else torch.device("cpu")
    gen = torch.Generator(device="cpu").manual_seed(seed + index)
    a = torch.randn(n, n, generator=gen, dtype=torch.float32).to(tdtype)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32).to(tdtype)
    rng = np.random.default_rng(seed + index)
    rows, cols = _sample_indices(n, rng), _sample_indices(n, rng)
    # the reference: the same rounded inputs, multiplied in float64 on the host
    a64 = a.float().numpy().astype(np.float64)
    b64 = b.float().numpy().astype(np.float64)
    reference = a64[rows] @ b64[:, cols]
    a_dev, b_dev = a.to(dev), b.to(dev)
    out = torch.empty(n, n, dtype=tdtype, device=dev)
    rows_t = torch.as_tensor(rows, device=dev)
    cols_t = torch.as_tensor(cols, device=dev)
    name = torch.cuda.get_device_name(index) if device == "gpu" else "CPU"

    def multiply() -> Any:
        if device == "gpu":
            torch.cuda.set_device(index)
        torch.matmul(a_dev, b_dev, out=out)
        return out

    def sample_block(product: Any) -> np.ndarray:
        return product.index_select(0, rows_t).index_select(1, cols_t).double().cpu().numpy()

    def corrupt(product: Any) -> None:
        product[int(rows[0]), int(cols[0])] += 1000.0

    result = DeviceSoak(device=f"{device}{index}", name=name, dtype=dtype, shape=n)
    return _Worker(
        result,
        multiply,
        sample_block,
        corrupt if index in faults.wrong else None,
        reference,
        faults.slow.get(index, 0.0),
    )


def _numpy_worker(index: int, n: int, faults: SoakFaults, seed: int) -> _Worker:
    rng = np.random.default_rng(seed + index)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    rows, cols = _sample_indices(n, rng), _sample_indices(n, rng)
    reference = a[rows].astype(np.float64) @ b[:, cols].astype(np.float64)
    out = np.empty((n, n), dtype=np.float32)

    def multiply() -> Any:
        np.matmul(a, b, out=out)
        return out

    def corrupt(product: Any) -> None:
        product[rows[0], cols[0]] += 1000.0

    result = DeviceSoak(device=f"cpu{index}", name="CPU", dtype="fp32", shape=n)
    return _Worker(
        result,
        multiply,
        lambda p: p[np.ix_(rows, cols)].astype(np.float64),
        corrupt if index in faults.wrong else None,
        reference,
        faults.slow.get(index, 0.0),
    )


@dataclass(frozen=True)
class SoakPlan:
    """What the soak will run: devices, dtype and matrix size."""

    device: str  # cpu | gpu
    indices: list[int]
    dtype: str
    shape: int
    backend: str  # torch | numpy


def plan_soak(device: str, cpu_workers: int = 1, shape: int | None = None) -> SoakPlan:
    """Pick devices, dtype and size: bf16 8192³ on GPUs with bf16, fp16 before Ampere; fp32 on a CPU."""
    if device == "gpu":
        import torch

        count = torch.cuda.device_count()
        major = min(torch.cuda.get_device_capability(i)[0] for i in range(count))
        dtype = "bf16" if major >= 8 else "fp16"
        return SoakPlan("gpu", list(range(count)), dtype, shape or 8192, "torch")
    backend = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
    if backend == "torch":
        # Import now, before the sequence can be interrupted: a Ctrl-C that lands inside
        # torch's own import leaves it half-initialised, and the interpreter then dies
        # at exit by SIGINT instead of leaving with status 130.
        import torch
    return SoakPlan("cpu", list(range(max(1, cpu_workers))), "fp32", shape or 384, backend)


def run_soak(
    plan: SoakPlan,
    duration_s: float,
    *,
    faults: SoakFaults | None = None,
    window_s: float | None = None,
    seed: int = 0,
    on_window: Callable[[list[DeviceSoak], float], None] | None = None,
    stop: threading.Event | None = None,
) -> list[DeviceSoak]:
    """Soak every device of `plan` at once for `duration_s`; returns what each did.

    `on_window(devices, elapsed_s)` is called about once a second from the calling
    thread (progress). Ctrl-C stops the workers and propagates after they have ended,
    so the partial results stay readable in the returned-by-reference objects.
    """
    faults = faults or SoakFaults()
    window_s = window_s or max(1.0, min(60.0, duration_s / 10))
    if plan.device == "cpu" and plan.backend == "torch":
        import torch

        torch.set_num_threads(max(1, (torch.get_num_threads() or 1) // len(plan.indices)))
    workers = [
        _torch_worker(plan.device, i, plan.dtype, plan.shape, faults, seed)
        if plan.backend == "torch"
        else _numpy_worker(i, plan.shape, faults, seed)
        for i in plan.indices
    ]
    stop = stop or threading.Event()
    start = time.perf_counter()
    end = start + duration_s
    try:
        # starting the threads is inside the try: a Ctrl-C between two starts must still stop
        # (and join) the ones already running, or they outlive the interpreter inside a matmul
        for w in workers:
            w.thread = threading.Thread(target=w.run, args=(stop, end, window_s), daemon=True)
            w.thread.start()
        while any(w.thread is not None and w.thread.is_alive() for w in workers):
            for w in workers:
                if w.thread is not None:
                    w.thread.join(timeout=1.0 / max(1, len(workers)))
            if on_window is not None:
                on_window([w.result for w in workers], time.perf_counter() - start)
    finally:
        stop.set()
        for w in workers:
            if w.thread is not None:
                w.thread.join(timeout=30)
    return [w.result for w in workers]
