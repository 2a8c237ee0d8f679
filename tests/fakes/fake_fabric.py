"""NVML's fabric, NVLink and PCIe-replay calls, added to the ``FakeNvml`` double.

``FakeFabricNvml`` subclasses ``tests.fakes.fake_nvml.FakeNvml`` and answers, with the
same names and signatures as nvidia-ml-py:

- ``nvmlDeviceGetGpuFabricInfoV`` / ``nvmlDeviceGetGpuFabricInfo``: fill the real
  ``c_nvmlGpuFabricInfoV_t`` / ``c_nvmlGpuFabricInfo_t`` passed by ``byref`` (as the
  C API takes a pointer); the V call checks the struct's ``version`` like NVML does;
- ``nvmlDeviceGetNvLinkState`` / ``nvmlDeviceGetNvLinkErrorCounter`` /
  ``nvmlDeviceGetNvLinkVersion``: per link; links past the GPU's count answer
  NVML_ERROR_INVALID_ARGUMENT, a GPU without NVLink NVML_ERROR_NOT_SUPPORTED;
- ``nvmlDeviceGetPcieReplayCounter``.

Scenarios are shaped on real nodes: an HGX H100 8-GPU with the fabric up (state
COMPLETED, status SUCCESS, 18 NVLink 4 links per GPU active), the same node with
Fabric Manager stopped (state NOT_STARTED, NVLinks not trained), PCIe H100s (fabric
NOT_SUPPORTED, no NVLink), a degraded link, and an A100-era driver without the V call.
"""

from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

from tests.fakes.fake_nvml import FakeGpu, FakeHandle, FakeNvml

H100_SXM_NVLINKS = 18  # NVLink 4: 18 links x 25 GB/s per direction = 900 GB/s per GPU
# The ClusterUUID Fabric Manager assigns an HGX baseboard (one per node).
CLUSTER_UUID = bytes.fromhex("5c7b3f2a9e1d4c8b a06f1e2d3c4b5a69".replace(" ", ""))

# healthMask with every field "false"/"none" (the v2 struct on a healthy fabric):
# degraded_bw FALSE, route_recovery FALSE, route_unhealthy FALSE, access_timeout FALSE,
# incorrect_configuration NONE.
HEALTHY_MASK = (
    (
        _real.NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_FALSE
        << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW
    )
    | (
        _real.NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_RECOVERY_FALSE
        << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_RECOVERY
    )
    | (
        _real.NVML_GPU_FABRIC_HEALTH_MASK_ROUTE_UNHEALTHY_FALSE
        << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ROUTE_UNHEALTHY
    )
    | (
        _real.NVML_GPU_FABRIC_HEALTH_MASK_ACCESS_TIMEOUT_RECOVERY_FALSE
        << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_ACCESS_TIMEOUT_RECOVERY
    )
    | (
        _real.NVML_GPU_FABRIC_HEALTH_MASK_INCORRECT_CONFIGURATION_NONE
        << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_INCORRECT_CONFIGURATION
    )
)
ERROR_COUNTERS = (
    _real.NVML_NVLINK_ERROR_DL_REPLAY,
    _real.NVML_NVLINK_ERROR_DL_RECOVERY,
    _real.NVML_NVLINK_ERROR_DL_CRC_FLIT,
    _real.NVML_NVLINK_ERROR_DL_CRC_DATA,
)


@dataclass
class FakeFabricGpu(FakeGpu):
    """A GPU plus its fabric/NVLink readings; ``None`` answers NVML_ERROR_NOT_SUPPORTED."""

    fabric_state: int | None = _real.NVML_GPU_FABRIC_STATE_COMPLETED
    fabric_status: int = _real.NVML_SUCCESS
    fabric_health_mask: int = HEALTHY_MASK
    fabric_clique_id: int = 32766
    nvlink_active: list[int] | None = field(default_factory=lambda: [1] * H100_SXM_NVLINKS)
    nvlink_version: int = _real.NVML_NVLINK_VERSION_4_0
    # link -> counter -> value; counters left out read 0
    nvlink_errors: dict[int, dict[int, int]] = field(default_factory=dict)
    nvlink_unsupported_counters: frozenset[int] = frozenset()
    pcie_replay: int | None = 0


def _target(ref: Any, kind: type) -> Any:
    """The struct behind a ``byref()``; anything else is what the C API cannot take."""
    obj = getattr(ref, "_obj", None)
    if not isinstance(obj, kind):
        raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
    return obj


class FakeFabricNvml(FakeNvml):
    """``FakeNvml`` with the fabric, NVLink and PCIe replay queries.

    ``has_fabric_v=False`` is a driver older than 535 whose libnvidia-ml lacks
    ``nvmlDeviceGetGpuFabricInfoV`` (nvidia-ml-py raises FUNCTION_NOT_FOUND).
    """

    def __init__(self, gpus: list[FakeFabricGpu] | None = None, has_fabric_v: bool = True, **kw: Any) -> None:
        super().__init__(gpus=gpus, **kw)
        self.has_fabric_v = has_fabric_v

    def _fabric_gpu(self, name: str, handle: FakeHandle) -> FakeFabricGpu:
        self._check(name)
        gpu = self._gpu(handle)
        if not isinstance(gpu, FakeFabricGpu):  # a plain FakeGpu: a board without any of this
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _fill(self, gpu: FakeFabricGpu, info: Any) -> None:
        if gpu.fabric_state is None:  # pre-Hopper: the query itself is not supported
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        ctypes.memmove(info.clusterUuid, CLUSTER_UUID, len(CLUSTER_UUID))
        info.state = gpu.fabric_state
        info.status = gpu.fabric_status
        info.cliqueId = (
            gpu.fabric_clique_id if gpu.fabric_state == _real.NVML_GPU_FABRIC_STATE_COMPLETED else 0
        )
        if hasattr(info, "healthMask"):
            info.healthMask = gpu.fabric_health_mask

    # -- fabric ----------------------------------------------------------------
    def nvmlDeviceGetGpuFabricInfo(self, device, gpuFabricInfo):
        gpu = self._fabric_gpu("nvmlDeviceGetGpuFabricInfo", device)
        self._fill(gpu, _target(gpuFabricInfo, _real.c_nvmlGpuFabricInfo_t))
        return _real.NVML_SUCCESS

    def nvmlDeviceGetGpuFabricInfoV(self, device, gpuFabricInfo):
        self.calls.append("nvmlDeviceGetGpuFabricInfoV")
        if not self.has_fabric_v:
            raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        self.calls.pop()
        gpu = self._fabric_gpu("nvmlDeviceGetGpuFabricInfoV", device)
        info = _target(gpuFabricInfo, _real.c_nvmlGpuFabricInfoV_t)
        if info.version != _real.nvmlGpuFabricInfo_v2:
            raise _real.NVMLError(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        self._fill(gpu, info)
        return _real.NVML_SUCCESS

    # -- NVLink ----------------------------------------------------------------
    def _link(self, name: str, device: FakeHandle, link: int) -> FakeFabricGpu:
        gpu = self._fabric_gpu(name, device)
        if gpu.nvlink_active is None:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < len(gpu.nvlink_active):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu

    def nvmlDeviceGetNvLinkState(self, device, link):
        gpu = self._link("nvmlDeviceGetNvLinkState", device, link)
        return _real.NVML_FEATURE_ENABLED if gpu.nvlink_active[link] else _real.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkVersion(self, device, link):
        return self._link("nvmlDeviceGetNvLinkVersion", device, link).nvlink_version

    def nvmlDeviceGetNvLinkErrorCounter(self, device, link, counter):
        gpu = self._link("nvmlDeviceGetNvLinkErrorCounter", device, link)
        if counter not in (*ERROR_COUNTERS, _real.NVML_NVLINK_ERROR_DL_ECC_DATA):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        if counter in gpu.nvlink_unsupported_counters:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.nvlink_errors.get(link, {}).get(counter, 0)

    # -- PCIe ------------------------------------------------------------------
    def nvmlDeviceGetPcieReplayCounter(self, handle):
        gpu = self._fabric_gpu("nvmlDeviceGetPcieReplayCounter", handle)
        if gpu.pcie_replay is None:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.pcie_replay


# --- scenarios ---------------------------------------------------------------

# PCI bus ids of an HGX H100 8-GPU baseboard as a Supermicro/Dell host enumerates them.
HGX_BUS_IDS = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")


def hgx_gpu(index: int, **changes: Any) -> FakeFabricGpu:
    """GPU `index` of an HGX H100 SXM5 baseboard, fabric up, idle."""
    gpu = FakeFabricGpu(
        uuid=f"GPU-7e2c9b41-03d5-4a6f-8c1e-5b9d0a2f3e{index:02d}",
        pci_bus_id=f"00000000:{HGX_BUS_IDS[index]}:00.0",
    )
    return dataclasses.replace(gpu, **changes)


def hgx_h100_fabric_up() -> FakeFabricNvml:
    """HGX H100 8-GPU, Fabric Manager running: every GPU COMPLETED/SUCCESS, 18 links active."""
    return FakeFabricNvml([hgx_gpu(i) for i in range(8)])


def hgx_h100_fabricmanager_stopped() -> FakeFabricNvml:
    """The same node with nvidia-fabricmanager not running (or never installed).

    The GPUs register with no Fabric Manager: state NOT_STARTED, status N/A (SUCCESS in the
    struct), no clique, and the NVLinks to the NVSwitches stay untrained (inactive).
    CUDA on such a node fails with error 802 (system not yet initialized).
    """
    return FakeFabricNvml(
        [
            hgx_gpu(
                i,
                fabric_state=_real.NVML_GPU_FABRIC_STATE_NOT_STARTED,
                fabric_health_mask=0,
                nvlink_active=[0] * H100_SXM_NVLINKS,
            )
            for i in range(8)
        ]
    )


def hgx_h100_fabric_in_progress() -> FakeFabricNvml:
    """Fabric Manager just started: the GPUs are still being trained into the fabric."""
    return FakeFabricNvml(
        [
            hgx_gpu(i, fabric_state=_real.NVML_GPU_FABRIC_STATE_IN_PROGRESS, fabric_health_mask=0)
            for i in range(8)
        ]
    )


def hgx_h100_registration_failed() -> FakeFabricNvml:
    """Fabric Manager finished but GPU 3's registration failed (status != SUCCESS)."""
    gpus = [hgx_gpu(i) for i in range(8)]
    gpus[3] = hgx_gpu(3, fabric_status=_real.NVML_ERROR_UNKNOWN)
    return FakeFabricNvml(gpus)


def hgx_h100_degraded_link() -> FakeFabricNvml:
    """GPU 5's link 7 is down, link 2 retrained twice and is racking up CRC errors."""
    gpus = [hgx_gpu(i) for i in range(8)]
    active = [1] * H100_SXM_NVLINKS
    active[7] = 0
    degraded = (HEALTHY_MASK & ~(0x3 << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW)) | (
        _real.NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_TRUE
        << _real.NVML_GPU_FABRIC_HEALTH_MASK_SHIFT_DEGRADED_BW
    )
    gpus[5] = hgx_gpu(
        5,
        nvlink_active=active,
        fabric_health_mask=degraded,
        nvlink_errors={
            2: {
                _real.NVML_NVLINK_ERROR_DL_RECOVERY: 2,
                _real.NVML_NVLINK_ERROR_DL_CRC_FLIT: 48_211,
                _real.NVML_NVLINK_ERROR_DL_REPLAY: 9_874,
            }
        },
    )
    return FakeFabricNvml(gpus)


def hgx_h100_pcie_replays() -> FakeFabricNvml:
    """GPU 0 sits behind a marginal riser: thousands of PCIe replays since boot."""
    gpus = [hgx_gpu(i) for i in range(8)]
    gpus[0] = hgx_gpu(0, pcie_replay=4_312)
    return FakeFabricNvml(gpus)


def pcie_h100() -> FakeFabricNvml:
    """Two H100 PCIe cards without NVLink bridges: fabric state NOT_SUPPORTED, no NVLink."""
    gpus = [
        FakeFabricGpu(
            name="NVIDIA H100 PCIe",
            uuid=f"GPU-1f0e3a5c-8b2d-4e71-9c6a-0d4b2e8f7a{i:02d}",
            memory_total=85520809984,
            pci_bus_id=f"00000000:{0x41 + 0x40 * i:02X}:00.0",
            power_limit_mw=350_000,
            default_power_limit_mw=350_000,
            max_sm_clock_mhz=1755,
            fabric_state=_real.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED,
            fabric_health_mask=0,
            fabric_clique_id=0,
            nvlink_active=None,
        )
        for i in range(2)
    ]
    return FakeFabricNvml(gpus)


def a100_old_driver() -> FakeFabricNvml:
    """HGX A100 on driver 525: no V call, the old call answers NOT_SUPPORTED (pre-Hopper), 12 links."""
    gpus = [
        FakeFabricGpu(
            name="NVIDIA A100-SXM4-80GB",
            uuid=f"GPU-0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c{i:02d}",
            compute_capability=(8, 0),
            pci_bus_id=f"00000000:{0x07 + 0x10 * i:02X}:00.0",
            fabric_state=None,
            nvlink_active=[1] * 12,
            nvlink_version=_real.NVML_NVLINK_VERSION_3_0,
        )
        for i in range(8)
    ]
    return FakeFabricNvml(gpus, has_fabric_v=False, driver_version="525.147.05", cuda_driver_version=12000)


SCENARIOS = {
    "hgx_h100_fabric_up": hgx_h100_fabric_up,
    "hgx_h100_fabricmanager_stopped": hgx_h100_fabricmanager_stopped,
    "hgx_h100_fabric_in_progress": hgx_h100_fabric_in_progress,
    "hgx_h100_registration_failed": hgx_h100_registration_failed,
    "hgx_h100_degraded_link": hgx_h100_degraded_link,
    "hgx_h100_pcie_replays": hgx_h100_pcie_replays,
    "pcie_h100": pcie_h100,
    "a100_old_driver": a100_old_driver,
}
