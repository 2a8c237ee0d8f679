"""A small NVML access layer over nvidia-ml-py (``import pynvml``).

Doctor and bench both read the GPU through here. ``pynvml`` is imported
lazily, and every entry point takes the module as an argument, so tests pass
``tests/fakes/fake_nvml.py`` (shaped exactly like nvidia-ml-py) instead.

NVML failures that mean "no usable GPU stack" become :class:`NvmlUnavailable`,
which carries the doctor status a user should see and the fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# Clock-event ("throttle") reason bits, as nvidia-ml-py names them
# (nvmlClocksEventReason* == the deprecated nvmlClocksThrottleReason*; BoardLimit and
# Reliability exist only under the old name). tests/unit/test_nvml.py checks every value
# against the installed pynvml, so this table cannot drift from nvml.h.
THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
# What a healthy GPU reports in normal work. nvml.h: SwPowerCap means "SW Power Scaling
# algorithm is reducing the clocks below requested clocks" -- an H100/H200 running a large
# GEMM sits at its power limit with this bit set, which is how it is designed to run.
# SyncBoost (clocks aligned across a sync-boost group), ApplicationsClocksSetting (clocks
# an admin set), GpuIdle and DisplayClockSetting are not faults either.
EXPECTED_BITS = 0x001 | 0x002 | 0x004 | 0x010 | 0x100
# The bits that mean something is wrong: heat (SW/HW thermal slowdown), the board's
# HW slowdown (thermal or an external power brake), or the power-brake assertion.
PROBLEM_BITS = 0x008 | 0x020 | 0x040 | 0x080
# Kept for callers that ask "is heat or power holding the clocks down at all?".
THERMAL_OR_POWER_BITS = 0x004 | PROBLEM_BITS
SW_POWER_CAP_BIT = 0x004
GPU_IDLE_BIT = 0x001
# A GPU drawing at least this share of its enforced limit is "at its power limit".
AT_POWER_LIMIT = 0.95

# NVML return codes (nvml.h; identical in every nvidia-ml-py release).
_LIBRARY_NOT_FOUND = 12
_DRIVER_NOT_LOADED = 9
_LIB_RM_VERSION_MISMATCH = 18
_NO_PERMISSION = 4
_GPU_IS_LOST = 15
_RESET_REQUIRED = 16
_FUNCTION_NOT_FOUND = 13
_NOT_SUPPORTED = 3

RELOAD_HINT = (
    "the NVIDIA kernel module and user-space library differ (driver upgraded without reboot): "
    "reload the nvidia module (sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && "
    "sudo modprobe nvidia) or reboot"
)


class NvmlUnavailable(Exception):
    """NVML cannot be used; ``status``/``hint`` say what a user should see and do."""

    def __init__(self, status: str, message: str, hint: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.code = code

    @classmethod
    def from_nvml_error(cls, exc: Exception) -> NvmlUnavailable:
        """Map a ``pynvml.NVMLError`` (by its ``.value`` code) to a doctor status."""
        code = getattr(exc, "value", None)
        text = _error_text(exc)
        if code == _LIBRARY_NOT_FOUND:
            return cls(
                "not_present",
                f"NVML library libnvidia-ml.so.1 not found ({text})",
                "no NVIDIA driver is installed; on a GPU host install one (make provision)",
                code,
            )
        if code == _DRIVER_NOT_LOADED:
            return cls(
                "fail",
                f"NVIDIA driver not loaded ({text})",
                "load it with `sudo modprobe nvidia` (check `dmesg | grep -i nvidia`), "
                "or reinstall the driver for the running kernel",
                code,
            )
        if code == _LIB_RM_VERSION_MISMATCH:
            return cls("fail", f"driver/library version mismatch ({text})", RELOAD_HINT, code)
        if code == _NO_PERMISSION:
            return cls(
                "warn",
                f"no permission to query NVML ({text})",
                "run as a user with access to /dev/nvidia* (group video) or inside a container "
                "started with --gpus",
                code,
            )
        if code in (_GPU_IS_LOST, _RESET_REQUIRED):
            return cls(
                "fail",
                f"a GPU fell off the bus or needs a reset ({text})",
                "check `dmesg` for Xid errors; reset the GPU (nvidia-smi -r) or reboot",
                code,
            )
        return cls("error", f"NVML failed: {text}", "see `nvidia-smi` for the driver's view", code)


def _error_text(exc: Exception) -> str:
    # NVMLError.__str__ calls into libnvidia-ml for unknown codes, which may itself fail.
    try:
        return str(exc)
    except Exception:
        return f"NVML error code {getattr(exc, 'value', '?')}"


def import_pynvml() -> ModuleType:
    """Import nvidia-ml-py, or raise NvmlUnavailable(not_present)."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(
            "not_present",
            "nvidia-ml-py (pynvml) is not installed",
            "pip install nvidia-ml-py",
        ) from None
    return pynvml


@contextlib.contextmanager
def nvml_session(nvml: Any = None) -> Iterator[Any]:
    """``nvmlInit`` ... ``nvmlShutdown`` around a block; yields the NVML module.

    ``nvml`` is the module to use (default: the real ``pynvml``). Init failures
    raise :class:`NvmlUnavailable`.
    """
    mod = nvml if nvml is not None else import_pynvml()
    try:
        mod.nvmlInit()
    except mod.NVMLError as exc:
        raise NvmlUnavailable.from_nvml_error(exc) from None
    except OSError as exc:  # a broken libnvidia-ml.so that fails to load
        raise NvmlUnavailable("fail", f"libnvidia-ml failed to load: {exc}", RELOAD_HINT) from None
    try:
        yield mod
    finally:
        with contextlib.suppress(mod.NVMLError):
            mod.nvmlShutdown()


def decode_throttle_reasons(mask: int) -> list[str]:
    """Names of the clock-event reason bits set in ``mask`` (unknown bits as hex)."""
    names = [name for bit, name in THROTTLE_BITS if mask & bit]
    known = 0
    for bit, _ in THROTTLE_BITS:
        known |= bit
    if mask & ~known:
        names.append(f"unknown_0x{mask & ~known:x}")
    return names


def is_thermal_or_power(mask: int) -> bool:
    """True when heat or a power cap (expected or not) is holding the clocks down."""
    return bool(mask & THERMAL_OR_POWER_BITS)


def problem_reasons(mask: int) -> list[str]:
    """The reasons in ``mask`` that mean a fault (heat, HW slowdown, power brake)."""
    return decode_throttle_reasons(mask & PROBLEM_BITS)


def is_problem(mask: int) -> bool:
    """True when a clock-event reason means the GPU is held down by a fault, not by design."""
    return bool(mask & PROBLEM_BITS)


def clock_evidence(
    sm_clock_mhz: float | None,
    max_sm_clock_mhz: float | None,
    power_w: float | None,
    power_limit_w: float | None,
) -> str:
    """'SM 1680/1980 MHz (85% of max), 698/700 W (100% of limit)' from whatever is known."""
    parts = []
    if sm_clock_mhz is not None and max_sm_clock_mhz:
        parts.append(
            f"SM {sm_clock_mhz:.0f}/{max_sm_clock_mhz:.0f} MHz ({sm_clock_mhz / max_sm_clock_mhz:.0%} of max)"
        )
    elif sm_clock_mhz is not None:
        parts.append(f"SM {sm_clock_mhz:.0f} MHz")
    if power_w is not None and power_limit_w:
        parts.append(f"{power_w:.0f}/{power_limit_w:.0f} W ({power_w / power_limit_w:.0%} of limit)")
    return ", ".join(parts) or "clocks and power not reported"


def clock_state(mask: int | None, power_w: float | None = None, power_limit_w: float | None = None) -> str:
    """One phrase for a clock-event mask: what a user should read it as.

    'throttled: <reasons>' is the only one that means a problem.
    """
    if mask is None:
        return "clock-event reasons not reported"
    if mask & PROBLEM_BITS:
        return "throttled: " + ", ".join(problem_reasons(mask))
    if mask & SW_POWER_CAP_BIT or (
        power_w is not None and power_limit_w and power_w >= AT_POWER_LIMIT * power_limit_w
    ):
        return "power-limited (expected under load)"
    if mask & GPU_IDLE_BIT:
        return "idle"
    if mask & 0x002:
        return "application clocks set"
    if mask & 0x010:
        return "sync boost"
    return "no clock events"


def optional(nvml: Any, fn: str, *args: Any) -> Any:
    """Call ``nvml.<fn>(*args)``; None where the GPU/driver lacks it (NOT_SUPPORTED etc.)."""
    try:
        return getattr(nvml, fn)(*args)
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) in (_GPU_IS_LOST, _RESET_REQUIRED, _LIB_RM_VERSION_MISMATCH):
            raise
        return None
    except AttributeError:  # an older nvidia-ml-py without this binding
        return None


def throttle_mask(nvml: Any, handle: Any) -> int | None:
    """Current clock-event reasons; falls back to the pre-535 "throttle" name."""
    mask = optional(nvml, "nvmlDeviceGetCurrentClocksEventReasons", handle)
    if mask is None:
        mask = optional(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", handle)
    return None if mask is None else int(mask)


@dataclass(frozen=True)
class GpuSample:
    """One GPU's clocks, power and throttle state at one moment."""

    index: int
    name: str
    uuid: str
    sm_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    power_w: float | None
    power_limit_w: float | None
    temperature_c: int | None
    throttle_mask: int | None
    throttle_reasons: list[str] = field(default_factory=list)

    @property
    def thermal_or_power_limited(self) -> bool:
        return self.throttle_mask is not None and is_thermal_or_power(self.throttle_mask)

    @property
    def problem(self) -> bool:
        """A fault reason (heat, HW slowdown, power brake) is set; SwPowerCap alone is not one."""
        return self.throttle_mask is not None and is_problem(self.throttle_mask)

    @property
    def state(self) -> str:
        return clock_state(self.throttle_mask, self.power_w, self.power_limit_w)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "sm_clock_mhz": self.sm_clock_mhz,
            "max_sm_clock_mhz": self.max_sm_clock_mhz,
            "power_w": self.power_w,
            "power_limit_w": self.power_limit_w,
            "temperature_c": self.temperature_c,
            "throttle_mask": self.throttle_mask,
            "throttle_reasons": list(self.throttle_reasons),
            "thermal_or_power_limited": self.thermal_or_power_limited,
            "problem": self.problem,
            "state": self.state,
        }


def _milliwatts_to_watts(value: int | None) -> float | None:
    return None if value is None else round(value / 1000.0, 1)


def sample_gpu(nvml: Any, index: int) -> GpuSample:
    """Sample one GPU (inside an :func:`nvml_session`)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    mask = throttle_mask(nvml, handle)
    return GpuSample(
        index=index,
        name=str(nvml.nvmlDeviceGetName(handle)),
        uuid=str(optional(nvml, "nvmlDeviceGetUUID", handle) or ""),
        sm_clock_mhz=optional(nvml, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM),
        max_sm_clock_mhz=optional(nvml, "nvmlDeviceGetMaxClockInfo", handle, nvml.NVML_CLOCK_SM),
        power_w=_milliwatts_to_watts(optional(nvml, "nvmlDeviceGetPowerUsage", handle)),
        power_limit_w=_milliwatts_to_watts(optional(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle)),
        temperature_c=optional(nvml, "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU),
        throttle_mask=mask,
        throttle_reasons=decode_throttle_reasons(mask) if mask is not None else [],
    )


def sample_gpus(nvml: Any) -> list[GpuSample]:
    """Sample every GPU NVML sees (call inside an :func:`nvml_session`)."""
    return [sample_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
