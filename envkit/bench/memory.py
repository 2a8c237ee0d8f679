"""`envkit bench memory`: device-to-device copy and host<->device transfer bandwidth.

Counting follows the usual conventions: a copy within one memory (D2D, or a host
`numpy` copy) moves its bytes twice (read + write); a transfer across PCIe/NVLink
counts the bytes once. Buffers are far larger than any cache, so no flush is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from envkit.bench.context import last_level_cache_bytes
from envkit.bench.errors import BenchInputError
from envkit.bench.report import new_document
from envkit.bench.stats import rate_stats, timing_stats

GPU_TESTS = ("d2d", "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")


@dataclass(frozen=True)
class MemoryOptions:
    device: str = "auto"  # auto | cpu | gpu
    size_mib: int | None = None  # None: 256 MiB on a CPU, 1 GiB on a GPU
    gpus: list[int] | None = None
    min_time_s: float = 0.5
    min_iters: int = 5
    max_iters: int = 50


def _iterations(one_call_s: float, options: MemoryOptions) -> int:
    return min(
        options.max_iters, max(options.min_iters, math.ceil(options.min_time_s / max(one_call_s, 1e-9)))
    )


def _result(test: str, device: str, name: str, nbytes: int, moved: int, times: list[float], correct: bool):
    stats = timing_stats(times)
    return {
        "test": test,
        "device": device,
        "device_name": name,
        "bytes": nbytes,
        "bytes_moved_per_call": moved,
        "iterations": stats.n,
        "seconds": stats.to_dict(),
        "gbps": {k: v / 1e9 for k, v in rate_stats(moved, stats).items()} if correct else None,
        "correct": correct,
        "status": "ok" if correct else "fail",
        "message": None if correct else "the copy's destination differs from its source",
    }


def host_copy(nbytes: int, options: MemoryOptions) -> dict[str, Any]:
    """numpy copy of a buffer much larger than the LLC: the host memory figure."""
    count = nbytes // 8
    src = np.random.default_rng().standard_normal(count)  # real values: no zero-page shortcuts
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up and page-in
    start = time.perf_counter()
    np.copyto(dst, src)
    iters = _iterations(time.perf_counter() - start, options)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    correct = bool(np.array_equal(dst, src))
    from envkit.bench.context import cpu_model

    return _result("host_copy", "cpu", cpu_model(), count * 8, 2 * count * 8, times, correct)


def gpu_tests(index: int, nbytes: int, options: MemoryOptions) -> list[dict[str, Any]]:
    """D2D copy and pinned/pageable H2D and D2H on CUDA device `index`, timed with events."""
    import torch

    dev = torch.device(f"cuda:{index}")
    torch.cuda.set_device(dev)
    name = torch.cuda.get_device_name(index)
    host_src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    pinned_src = host_src.pin_memory()
    device_src = host_src.to(dev)
    device_dst = torch.empty_like(device_src)
    pinned_dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    pageable_dst = torch.empty(nbytes, dtype=torch.uint8)

    def timed(copy: Callable[[], None]) -> list[float]:
        copy()
        torch.cuda.synchronize(dev)
        probe_start, probe_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        probe_start.record()
        copy()
        probe_end.record()
        torch.cuda.synchronize(dev)
        iters = _iterations(probe_start.elapsed_time(probe_end) / 1000, options)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)
        ]
        for start, end in events:
            start.record()
            copy()
            end.record()
        torch.cuda.synchronize(dev)
        return [start.elapsed_time(end) / 1000 for start, end in events]

    results = []
    cases: list[tuple[str, Callable[[], None], Callable[[], bool], int]] = [
        ("d2d", lambda: device_dst.copy_(device_src), lambda: bool(torch.equal(device_dst, device_src)), 2),
        (
            "h2d_pinned",
            lambda: device_dst.copy_(pinned_src, non_blocking=True),
            lambda: bool(torch.equal(device_dst.cpu(), host_src)),
            1,
        ),
        (
            "h2d_pageable",
            lambda: device_dst.copy_(host_src),
            lambda: bool(torch.equal(device_dst.cpu(), host_src)),
            1,
        ),
        (
            "d2h_pinned",
            lambda: pinned_dst.copy_(device_src, non_blocking=True),
            lambda: bool(torch.equal(pinned_dst, host_src)),
            1,
        ),
        (
            "d2h_pageable",
            lambda: pageable_dst.copy_(device_src),
            lambda: bool(torch.equal(pageable_dst, host_src)),
            1,
        ),
    ]
    for test, copy, check, factor in cases:
        device_dst.zero_()
        pinned_dst.zero_()
        pageable_dst.zero_()
        try:
            times = timed(copy)
            torch.cuda.synchronize(dev)
            results.append(_result(test, str(dev), name, nbytes, factor * nbytes, times, check()))
        except RuntimeError as exc:
            results.append(
                {
                    "test": test,
                    "device": str(dev),
                    "device_name": name,
                    "bytes": nbytes,
                    "seconds": None,
                    "gbps": None,
                    "correct": False,
                    "status": "error",
                    "message": str(exc).splitlines()[0],
                }
            )
    torch.cuda.empty_cache()
    return results


def run_memory(options: MemoryOptions, on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the memory benchmark; returns the result document."""
    if options.size_mib is not None and options.size_mib <= 0:
        raise BenchInputError(f"--size-mib must be positive, got {options.size_mib}")
    doc = new_document("memory", options=dict(options.__dict__))
    gpus: list[int] = []
    if options.device != "cpu":
        try:
            import torch

            if torch.cuda.is_available():
                gpus = list(range(torch.cuda.device_count()))
                doc["context"]["torch"] = {"torch": torch.__version__, "cuda": torch.version.cuda}
        except ImportError:
            gpus = []
        if options.gpus is not None:
            gpus = [g for g in gpus if g in options.gpus]
        if options.device == "gpu" and not gpus:
            raise BenchInputError("--device gpu but torch sees no (selected) CUDA GPU; use --device cpu")
    try:
        if gpus:
            nbytes = (options.size_mib or 1024) * 1024**2
            for index in gpus:
                if on_progress:
                    on_progress(f"GPU {index}: D2D, H2D and D2H copies of {nbytes // 1024**2} MiB")
                doc["results"].extend(gpu_tests(index, nbytes, options))
        else:
            llc = last_level_cache_bytes() or 32 * 1024**2
            nbytes = (options.size_mib or max(256, 8 * llc // 1024**2)) * 1024**2
            if on_progress:
                on_progress(f"host memory: numpy copy of {nbytes // 1024**2} MiB")
            doc["results"].append(host_copy(nbytes, options))
    except KeyboardInterrupt:
        doc["interrupted"] = True
    failures = sum(1 for r in doc["results"] if r["status"] != "ok")
    doc["summary"] = {"status": "fail" if failures else "ok", "failures": failures}
    return doc
