"""GPU clocks, power and clock-event reasons sampled through NVML while a benchmark runs.

A background thread samples one GPU every `interval_s`. The summary says whether the
run was `throttled`, which means a *problem*: a fault reason (HW slowdown, SW/HW
thermal slowdown, HW power brake) in any sample, or a median SM clock below 75% of the
maximum that no expected reason explains. A GPU at its power limit (SwPowerCap, power
~= limit) is how an H100/H200 runs a large GEMM: that is `power-limited (expected under
load)`, reported as evidence with clocks-vs-max and power-vs-limit, never as throttled.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

from envkit.nvml import (
    AT_POWER_LIMIT,
    EXPECTED_BITS,
    SW_POWER_CAP_BIT,
    GpuSample,
    NvmlUnavailable,
    clock_evidence,
    nvml_session,
    problem_reasons,
    sample_gpu,
    sample_gpus,
)

THROTTLE_CLOCK_FRACTION = 0.75
POWER_LIMITED = "power-limited (expected under load)"


def throttle_verdict(samples: list[GpuSample]) -> tuple[bool, list[str]]:
    """(throttled, why) from samples taken under load; only problems count."""
    why: list[str] = []
    problems = sorted(
        {r for s in samples if s.throttle_mask is not None for r in problem_reasons(s.throttle_mask)}
    )
    if problems:
        why.append("clock-event reasons that mean a problem: " + ", ".join(problems))
    clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    max_clock = max((s.max_sm_clock_mhz for s in samples if s.max_sm_clock_mhz), default=None)
    if clocks and max_clock:
        median = statistics.median(clocks)
        explained = any(s.throttle_mask and s.throttle_mask & EXPECTED_BITS for s in samples) or _at_limit(
            samples
        )
        if median < THROTTLE_CLOCK_FRACTION * max_clock and not explained:
            why.append(
                f"median SM clock {median:.0f} MHz is below {THROTTLE_CLOCK_FRACTION:.0%} "
                f"of the maximum {max_clock} MHz with no expected clock-event reason"
            )
    return bool(why), why


def _at_limit(samples: list[GpuSample]) -> bool:
    power = [s.power_w for s in samples if s.power_w is not None]
    limit = next((s.power_limit_w for s in samples if s.power_limit_w), None)
    return bool(power and limit and statistics.median(power) >= AT_POWER_LIMIT * limit)


def clock_summary(samples: list[GpuSample], throttled: bool) -> tuple[str, str]:
    """(state, evidence): 'throttled' / 'power-limited (expected under load)' / ..., and the numbers."""
    clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    power = [s.power_w for s in samples if s.power_w is not None]
    max_clock = max((s.max_sm_clock_mhz for s in samples if s.max_sm_clock_mhz), default=None)
    limit = next((s.power_limit_w for s in samples if s.power_limit_w), None)
    evidence = clock_evidence(
        statistics.median(clocks) if clocks else None,
        max_clock,
        statistics.median(power) if power else None,
        limit,
    )
    if throttled:
        state = "throttled"
    elif any(s.throttle_mask and s.throttle_mask & SW_POWER_CAP_BIT for s in samples) or _at_limit(samples):
        state = POWER_LIMITED
    elif samples and all(s.throttle_reasons == ["gpu_idle"] for s in samples):
        state = "idle"
    else:
        state = "full clocks"
    return state, evidence


@dataclass
class TelemetrySummary:
    """What NVML said about one GPU during one run."""

    available: bool
    reason: str | None = None
    samples: int = 0
    sm_clock_mhz: dict[str, float] | None = None
    max_sm_clock_mhz: int | None = None
    power_w: dict[str, float] | None = None
    power_limit_w: float | None = None
    temperature_c_max: int | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    throttled: bool | None = None
    throttled_because: list[str] = field(default_factory=list)
    clock_state: str | None = None  # throttled | power-limited (expected under load) | idle | full clocks
    clock_evidence: str | None = None  # median SM clock vs max, median power vs limit

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarise(samples: list[GpuSample]) -> TelemetrySummary:
    """Collapse a run's samples into min/median/max clocks, mean/max power and the throttle verdict."""
    if not samples:
        return TelemetrySummary(available=True, reason="no sample was taken (run shorter than one interval)")
    clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    power = [s.power_w for s in samples if s.power_w is not None]
    temps = [s.temperature_c for s in samples if s.temperature_c is not None]
    throttled, why = throttle_verdict(samples)
    state, evidence = clock_summary(samples, throttled)
    return TelemetrySummary(
        available=True,
        samples=len(samples),
        sm_clock_mhz=(
            {"min": min(clocks), "median": statistics.median(clocks), "max": max(clocks)} if clocks else None
        ),
        max_sm_clock_mhz=max((s.max_sm_clock_mhz for s in samples if s.max_sm_clock_mhz), default=None),
        power_w={"mean": statistics.fmean(power), "max": max(power)} if power else None,
        power_limit_w=next((s.power_limit_w for s in samples if s.power_limit_w), None),
        temperature_c_max=max(temps) if temps else None,
        throttle_reasons=sorted({r for s in samples for r in s.throttle_reasons}),
        throttled=throttled,
        throttled_because=why,
        clock_state=state,
        clock_evidence=evidence,
    )


class GpuSampler:
    """Samples one GPU (by NVML index) in a background thread between start() and stop()."""

    def __init__(self, nvml_index: int, interval_s: float = 0.05, nvml: Any = None) -> None:
        self.nvml_index = nvml_index
        self.interval_s = interval_s
        self._nvml = nvml
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[GpuSample] = []
        self.error: str | None = None

    def _loop(self) -> None:
        try:
            with nvml_session(self._nvml) as nvml:
                while True:
                    self.samples.append(sample_gpu(nvml, self.nvml_index))
                    if self._stop.wait(self.interval_s):
                        break
        except NvmlUnavailable as exc:
            self.error = exc.message
        except Exception as exc:  # a sampler must never take the benchmark down
            self.error = _nvml_failure(exc, "NVML sampling failed")

    def start(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._loop, name="envkit-nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> TelemetrySummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.error and not self.samples:
            return TelemetrySummary(available=False, reason=self.error)
        return summarise(self.samples)

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def nvml_inventory(nvml: Any = None) -> tuple[list[GpuSample], str | None, str | None]:
    """(one sample per GPU, driver version, why NVML is unavailable) without raising."""
    try:
        with nvml_session(nvml) as mod:
            driver = mod.nvmlSystemGetDriverVersion()
            return sample_gpus(mod), str(driver), None
    except NvmlUnavailable as exc:
        return [], None, exc.message
    except Exception as exc:  # report, never crash a benchmark over telemetry
        return [], None, _nvml_failure(exc, "NVML failed")


def _nvml_failure(exc: Exception, prefix: str) -> str:
    """An NVMLError mid-run (GPU lost, mismatch) in doctor's words; anything else as is."""
    if isinstance(getattr(exc, "value", None), int):
        return NvmlUnavailable.from_nvml_error(exc).message
    return f"{prefix}: {exc}"


def nvml_index_for(uuid: str | None, fallback_index: int, inventory: list[GpuSample]) -> int | None:
    """NVML's index for a CUDA device: matched by UUID (CUDA and NVML may order GPUs differently)."""
    if uuid:
        wanted = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        for sample in inventory:
            if sample.uuid == wanted:
                return sample.index
    return fallback_index if any(s.index == fallback_index for s in inventory) else None
