"""GPU clocks, power and throttle reasons sampled through NVML while a benchmark runs.

A background thread samples one GPU every `interval_s`; the summary says
whether the run was `throttled`: the median SM clock below 75% of the GPU's
maximum, or any sample with a thermal or power-cap reason bit set.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

from envkit.nvml import GpuSample, NvmlUnavailable, nvml_session, sample_gpu, sample_gpus

THROTTLE_CLOCK_FRACTION = 0.75


def throttle_verdict(samples: list[GpuSample]) -> tuple[bool, list[str]]:
    """(throttled, why) from samples taken under load."""
    why: list[str] = []
    clocks = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    max_clock = max((s.max_sm_clock_mhz for s in samples if s.max_sm_clock_mhz), default=None)
    if clocks and max_clock:
        median = statistics.median(clocks)
        if median < THROTTLE_CLOCK_FRACTION * max_clock:
            why.append(
                f"median SM clock {median:.0f} MHz is below {THROTTLE_CLOCK_FRACTION:.0%} "
                f"of the maximum {max_clock} MHz"
            )
    limited = sorted(
        {r for s in samples if s.thermal_or_power_limited for r in s.throttle_reasons if r != "gpu_idle"}
    )
    if limited:
        why.append("thermal/power clock-event reasons seen: " + ", ".join(limited))
    return bool(why), why


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
            self.error = f"NVML sampling failed: {exc}"

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
        return [], None, f"NVML failed: {exc}"


def nvml_index_for(uuid: str | None, fallback_index: int, inventory: list[GpuSample]) -> int | None:
    """NVML's index for a CUDA device: matched by UUID (CUDA and NVML may order GPUs differently)."""
    if uuid:
        wanted = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        for sample in inventory:
            if sample.uuid == wanted:
                return sample.index
    return fallback_index if any(s.index == fallback_index for s in inventory) else None
