"""A test double for nvidia-ml-py (``pynvml``), for machines without a GPU.

``FakeNvml`` answers the same functions with the same signatures as the real
module (``tests/unit/test_nvml.py`` checks that against the installed
``pynvml``), raises the real ``pynvml.NVMLError_*`` classes with their
``.value`` codes, and returns the real ctypes structures
(``c_nvmlMemory_t``). Constants (``NVML_*``, ``nvmlClocksEventReason*``) are
the real module's, so code under test cannot tell the difference.

Scenario factories at the bottom describe the machines a user may have, with the
readings a real device of that kind shows: a cold idle H100 (GpuIdle), a busy H100
at its power limit (SwPowerCap, ~85% of max clock, power ~= limit), a hot one
(thermal slowdown), 8xH100, a driver/library mismatch, NVML missing, a GPU fallen
off the bus (GPU_IS_LOST), a PCIe link trained down, ECC errors, MIG.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

# Re-export the real constants, error classes and structures.
_EXPORTED = {
    name: getattr(_real, name)
    for name in dir(_real)
    if name.startswith(("NVML_", "nvmlClocks", "NVMLError", "c_nvml", "nvmlPciInfo"))
}

NOT_SUPPORTED = None  # a FakeGpu field left None answers NVML_ERROR_NOT_SUPPORTED


@dataclass
class FakeGpu:
    """One GPU as NVML reports it; ``None`` means the query is not supported."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-4b6f2d1e-9a3c-4e58-b7d0-1c2e3f4a5b60"
    memory_total: int = 85520809984  # 81559 MiB, as an H100 SXM reports
    memory_used: int = 565182464
    compute_capability: tuple[int, int] = (9, 0)
    ecc_mode: list[int] | None = field(default_factory=lambda: [1, 1])  # [current, pending]
    ecc_uncorrected_volatile: int = 0
    ecc_uncorrected_aggregate: int = 0
    ecc_corrected_volatile: int = 0
    retired_pages: dict[int, list[int]] | None = None  # cause -> page addresses; None: not supported
    retired_pages_pending: int | None = None
    remapped_rows: tuple[int, int, int, int] | None = (0, 0, 0, 0)  # corr, unc, pending, failure
    pcie_gen_current: int | None = 5
    pcie_gen_max: int | None = 5
    pcie_gen_gpu_max: int | None = 5
    pcie_width_current: int | None = 16
    pcie_width_max: int | None = 16
    sm_clock_mhz: int | None = 345
    max_sm_clock_mhz: int | None = 1980
    clocks_event_reasons: int | None = 0x1  # gpu_idle
    power_mw: int | None = 71_234
    power_limit_mw: int | None = 700_000
    default_power_limit_mw: int | None = 700_000
    temperature_c: int | None = 31
    persistence_mode: int | None = 1
    mig_mode: list[int] | None = field(default_factory=lambda: [0, 0])
    pci_bus_id: str = "00000000:18:00.0"
    lost: bool = False  # fallen off the bus: every query answers NVML_ERROR_GPU_IS_LOST


class FakeHandle:
    """Opaque device handle (the real one is a ctypes pointer)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<FakeHandle gpu{self.index}>"


class FakeNvml:
    """Module-shaped stand-in for ``pynvml``; pass it wherever envkit takes ``nvml=``."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        driver_version: str = "580.82.07",
        cuda_driver_version: int = 13000,
        nvml_version: str | None = None,
        init_error: int | None = None,
    ) -> None:
        self.__dict__.update(_EXPORTED)
        self.gpus = list(gpus) if gpus is not None else []
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.nvml_version = nvml_version or f"{cuda_driver_version // 1000}.{driver_version}"
        self.init_error = init_error
        self.initialized = 0
        self.calls: list[str] = []

    # -- plumbing -------------------------------------------------------------
    def _check(self, name: str) -> None:
        self.calls.append(name)
        if not self.initialized:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self.gpus):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _field(self, name: str, handle: FakeHandle, attr: str) -> Any:
        self._check(name)
        value = getattr(self._gpu(handle), attr)
        if value is None:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return value

    # -- init / system --------------------------------------------------------
    def nvmlInit(self):
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise _real.NVMLError(self.init_error)
        self.initialized += 1

    def nvmlInitWithFlags(self, flags):
        self.nvmlInit()

    def nvmlShutdown(self):
        self._check("nvmlShutdown")
        self.initialized -= 1

    def nvmlErrorString(self, result):
        return _real.NVMLError._errcode_to_string.get(result, "Unknown Error")

    def nvmlSystemGetDriverVersion(self):
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self):
        self._check("nvmlSystemGetNVMLVersion")
        return self.nvml_version

    def nvmlSystemGetCudaDriverVersion(self):
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self):
        self._check("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda_driver_version

    # -- devices ----------------------------------------------------------------
    def nvmlDeviceGetCount(self):
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:  # the driver cannot even hand out a handle (Xid 79)
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        return FakeHandle(index)

    def nvmlDeviceGetIndex(self, handle):
        self._check("nvmlDeviceGetIndex")
        self._gpu(handle)
        return handle.index

    def nvmlDeviceGetName(self, handle):
        return self._field("nvmlDeviceGetName", handle, "name")

    def nvmlDeviceGetUUID(self, handle):
        return self._field("nvmlDeviceGetUUID", handle, "uuid")

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        self._check("nvmlDeviceGetMemoryInfo")
        gpu = self._gpu(handle)
        if version:
            mem = _real.c_nvmlMemory_v2_t()
            mem.version = version
            mem.total, mem.used = gpu.memory_total, gpu.memory_used
            mem.free = gpu.memory_total - gpu.memory_used
            return mem
        return _real.c_nvmlMemory_t(
            total=gpu.memory_total, free=gpu.memory_total - gpu.memory_used, used=gpu.memory_used
        )

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return tuple(self._field("nvmlDeviceGetCudaComputeCapability", handle, "compute_capability"))

    def nvmlDeviceGetPersistenceMode(self, handle):
        return self._field("nvmlDeviceGetPersistenceMode", handle, "persistence_mode")

    def nvmlDeviceGetPciInfo_v3(self, handle):
        self._check("nvmlDeviceGetPciInfo_v3")
        info = _real.nvmlPciInfo_t()
        info.busId = self._gpu(handle).pci_bus_id.encode()
        return info

    def nvmlDeviceGetPciInfo(self, handle):
        return self.nvmlDeviceGetPciInfo_v3(handle)

    # -- ECC / memory health -----------------------------------------------------
    def nvmlDeviceGetEccMode(self, handle):
        return list(self._field("nvmlDeviceGetEccMode", handle, "ecc_mode"))

    def nvmlDeviceGetTotalEccErrors(self, handle, errorType, counterType):
        self._check("nvmlDeviceGetTotalEccErrors")
        gpu = self._gpu(handle)
        if not gpu.ecc_mode or not gpu.ecc_mode[0]:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        if errorType == _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            if counterType == _real.NVML_VOLATILE_ECC:
                return gpu.ecc_uncorrected_volatile
            return gpu.ecc_uncorrected_aggregate
        if counterType == _real.NVML_VOLATILE_ECC:
            return gpu.ecc_corrected_volatile
        return gpu.ecc_corrected_volatile

    def nvmlDeviceGetRetiredPages(self, device, sourceFilter):
        pages = self._field("nvmlDeviceGetRetiredPages", device, "retired_pages")
        return list(pages.get(sourceFilter, []))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device):
        return int(self._field("nvmlDeviceGetRetiredPagesPendingStatus", device, "retired_pages_pending"))

    def nvmlDeviceGetRemappedRows(self, device):
        return tuple(self._field("nvmlDeviceGetRemappedRows", device, "remapped_rows"))

    # -- PCIe ----------------------------------------------------------------
    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle):
        return self._field("nvmlDeviceGetCurrPcieLinkGeneration", handle, "pcie_gen_current")

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle):
        return self._field("nvmlDeviceGetMaxPcieLinkGeneration", handle, "pcie_gen_max")

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, handle):
        return self._field("nvmlDeviceGetGpuMaxPcieLinkGeneration", handle, "pcie_gen_gpu_max")

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle):
        return self._field("nvmlDeviceGetCurrPcieLinkWidth", handle, "pcie_width_current")

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle):
        return self._field("nvmlDeviceGetMaxPcieLinkWidth", handle, "pcie_width_max")

    # -- clocks, power, temperature -----------------------------------------------
    def nvmlDeviceGetClockInfo(self, handle, type):
        if type != _real.NVML_CLOCK_SM:
            self._check("nvmlDeviceGetClockInfo")
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return self._field("nvmlDeviceGetClockInfo", handle, "sm_clock_mhz")

    def nvmlDeviceGetMaxClockInfo(self, handle, type):
        if type != _real.NVML_CLOCK_SM:
            self._check("nvmlDeviceGetMaxClockInfo")
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return self._field("nvmlDeviceGetMaxClockInfo", handle, "max_sm_clock_mhz")

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._field("nvmlDeviceGetCurrentClocksEventReasons", handle, "clocks_event_reasons")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return self._field("nvmlDeviceGetCurrentClocksThrottleReasons", handle, "clocks_event_reasons")

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._field("nvmlDeviceGetPowerUsage", handle, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._field("nvmlDeviceGetEnforcedPowerLimit", handle, "power_limit_mw")

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return self._field("nvmlDeviceGetPowerManagementLimit", handle, "power_limit_mw")

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle):
        return self._field("nvmlDeviceGetPowerManagementDefaultLimit", handle, "default_power_limit_mw")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        if sensor != _real.NVML_TEMPERATURE_GPU:
            self._check("nvmlDeviceGetTemperature")
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return self._field("nvmlDeviceGetTemperature", handle, "temperature_c")

    # -- MIG -----------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, device):
        return list(self._field("nvmlDeviceGetMigMode", device, "mig_mode"))


# --- scenarios ---------------------------------------------------------------


def _h100(index: int = 0, **changes: Any) -> FakeGpu:
    gpu = FakeGpu(
        uuid=f"GPU-4b6f2d1e-9a3c-4e58-b7d0-1c2e3f4a5b{index:02d}",
        pci_bus_id=f"00000000:{0x18 + 0x10 * index:02X}:00.0",
    )
    return dataclasses.replace(gpu, **changes)


def healthy_h100() -> FakeNvml:
    """One cold, idle, healthy H100 SXM on driver 580 (CUDA 13.0): GpuIdle, 345 MHz, 71 W, 31 C."""
    return FakeNvml([_h100()])


def busy_h100_at_power_limit() -> FakeNvml:
    """A healthy H100 SXM running a large bf16 GEMM, as nvidia-smi shows one.

    It sits at its 700 W limit with SwPowerCap set and the SM clock around 85% of the
    1980 MHz maximum (1680 MHz), at a normal 67 C: no fault, just how it is built to run.
    """
    return FakeNvml(
        [
            _h100(
                sm_clock_mhz=1680,
                clocks_event_reasons=_real.nvmlClocksEventReasonSwPowerCap,
                power_mw=699_112,
                temperature_c=67,
                memory_used=60_129_542_144,
            )
        ]
    )


def hot_h100() -> FakeNvml:
    """A hot H100 (blocked airflow): thermal slowdown only, SM clock 1095/1980 MHz, 89 C, 520 W."""
    mask = _real.nvmlClocksEventReasonSwThermalSlowdown | _real.nvmlClocksEventReasonHwThermalSlowdown
    return FakeNvml([_h100(sm_clock_mhz=1095, clocks_event_reasons=mask, temperature_c=89, power_mw=520_300)])


def gpu_lost() -> FakeNvml:
    """NVML initialises but the GPU fell off the bus (Xid 79): NVML_ERROR_GPU_IS_LOST."""
    return FakeNvml([_h100(lost=True)])


def eight_h100() -> FakeNvml:
    """An HGX H100 node: eight healthy GPUs."""
    return FakeNvml([_h100(i) for i in range(8)])


def driver_library_mismatch() -> FakeNvml:
    """Driver upgraded without a reboot: the kernel module and libnvidia-ml differ."""
    return FakeNvml(init_error=_real.NVML_ERROR_LIB_RM_VERSION_MISMATCH)


def library_not_found() -> FakeNvml:
    """No NVIDIA driver installed: libnvidia-ml.so.1 cannot be loaded."""
    return FakeNvml(init_error=_real.NVML_ERROR_LIBRARY_NOT_FOUND)


def driver_not_loaded() -> FakeNvml:
    """The user-space library is there but the kernel module is not loaded."""
    return FakeNvml(init_error=_real.NVML_ERROR_DRIVER_NOT_LOADED)


def no_permission() -> FakeNvml:
    """The process may not open /dev/nvidia*."""
    return FakeNvml(init_error=_real.NVML_ERROR_NO_PERMISSION)


def throttling() -> FakeNvml:
    """Under load, hot AND at its power cap: SM clock far below max (thermal is the problem)."""
    mask = (
        _real.nvmlClocksEventReasonSwPowerCap
        | _real.nvmlClocksEventReasonSwThermalSlowdown
        | _real.nvmlClocksEventReasonHwThermalSlowdown
    )
    return FakeNvml([_h100(sm_clock_mhz=1095, clocks_event_reasons=mask, temperature_c=89, power_mw=698_500)])


def pcie_downtrained() -> FakeNvml:
    """Busy GPU whose link trained at Gen3 x8 although Gen5 x16 is possible."""
    return FakeNvml(
        [
            _h100(
                pcie_gen_current=3,
                pcie_width_current=8,
                sm_clock_mhz=1980,
                clocks_event_reasons=_real.nvmlClocksEventReasonNone,
                power_mw=410_000,
            )
        ]
    )


def ecc_errors() -> FakeNvml:
    """Uncorrectable ECC errors since boot; a row remap waits for a GPU reset."""
    return FakeNvml(
        [
            _h100(
                ecc_uncorrected_volatile=3,
                ecc_uncorrected_aggregate=7,
                ecc_corrected_volatile=120,
                remapped_rows=(2, 3, 1, 0),
            )
        ]
    )


def retired_pages() -> FakeNvml:
    """A V100 (pre-Ampere: page retirement, no row remapping) with retired pages pending."""
    return FakeNvml(
        [
            FakeGpu(
                name="Tesla V100-SXM2-32GB",
                memory_total=34359738368,
                compute_capability=(7, 0),
                ecc_uncorrected_aggregate=2,
                retired_pages={
                    _real.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS: [0x1A2B3000],
                    _real.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR: [0x2B3C4000, 0x2B3C5000],
                },
                retired_pages_pending=1,
                remapped_rows=None,
                pcie_gen_current=3,
                pcie_gen_max=3,
                pcie_gen_gpu_max=3,
                max_sm_clock_mhz=1530,
                power_limit_mw=300_000,
                default_power_limit_mw=300_000,
                mig_mode=None,
            )
        ],
        driver_version="535.183.01",
        cuda_driver_version=12020,
    )


def mig_enabled() -> FakeNvml:
    """An H100 partitioned with MIG."""
    return FakeNvml([_h100(mig_mode=[1, 1])])


SCENARIOS = {
    "healthy_h100": healthy_h100,
    "busy_h100_at_power_limit": busy_h100_at_power_limit,
    "hot_h100": hot_h100,
    "gpu_lost": gpu_lost,
    "eight_h100": eight_h100,
    "driver_library_mismatch": driver_library_mismatch,
    "library_not_found": library_not_found,
    "driver_not_loaded": driver_not_loaded,
    "no_permission": no_permission,
    "throttling": throttling,
    "pcie_downtrained": pcie_downtrained,
    "ecc_errors": ecc_errors,
    "retired_pages": retired_pages,
    "mig_enabled": mig_enabled,
}
