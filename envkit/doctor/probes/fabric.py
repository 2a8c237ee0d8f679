"""Fabric probe: NVSwitch fabric state per GPU, Fabric Manager, NVLink links and PCIe replays.

An HGX/DGX node (8 SXM GPUs behind NVSwitches) needs the NVIDIA Fabric Manager to
train the NVLink fabric: without it `nvidia-smi` looks healthy while every CUDA
context fails with error 802 ("system not yet initialized"). NVML reports the fabric
per GPU (`nvmlDeviceGetGpuFabricInfoV`, Hopper and newer); NVSwitches themselves show
on the PCI bus (vendor 0x10de, class 0x0680), which is how an A100 node, whose GPUs
do not report a fabric, is recognised too.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass, field
from typing import Any

from envkit.doctor.model import FAIL, NOT_APPLICABLE, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions, nvidia_pci_devices
from envkit.nvml import NvmlUnavailable, nvml_session, optional

AREA = "fabric"
# PCI class 0x0680: "bridge, other" -- what an NVSwitch reports.
NVSWITCH_CLASS_PREFIX = "0x0680"
FM_SERVICE = "nvidia-fabricmanager"
FM_START_HINT = (
    f"start nvidia-fabricmanager: sudo systemctl enable --now {FM_SERVICE} "
    "(its version must equal the driver's; journalctl -u nvidia-fabricmanager says why it stopped; "
    "make provision installs it)"
)
# nvml.h nvmlGpuFabricState_t
STATE_NAMES = {0: "not supported", 1: "not started", 2: "in progress", 3: "completed"}
_NOT_SUPPORTED_STATE, _NOT_STARTED, _IN_PROGRESS, _COMPLETED = 0, 1, 2, 3

# nvml.h NVML_NVLINK_ERROR_DL_*: the counters a link keeps since the driver loaded.
NVLINK_COUNTERS = {0: "replay", 1: "recovery", 2: "crc_flit", 3: "crc_data"}
# NVML gives counts since the driver loaded, not rates (DCGM's health watches compare
# rates). A handful of replays/CRC errors over days of uptime is normal link noise; the
# thresholds below are "many more than noise" on one link. Any recovery means the link
# dropped and retrained, which a healthy link never does.
NVLINK_NOISE_LIMIT = 1000
PCIE_REPLAY_LIMIT = 100
_NVML_SUCCESS = 0
_NVML_NOT_SUPPORTED = 3
_NVML_FUNCTION_NOT_FOUND = 13
_FATAL = (15, 16, 18)  # GPU_IS_LOST, RESET_REQUIRED, LIB_RM_VERSION_MISMATCH
_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS in nvidia-ml-py 12.5xx+; older bindings say 18

# healthMask fields of the v2 struct: (name, shift, the value that is bad, status).
_HEALTH_FIELDS = (
    ("degraded bandwidth", 0, 1, WARN),
    ("route recovery in progress", 2, 1, WARN),
    ("route unhealthy", 4, 1, FAIL),
    ("access timeout recovery", 6, 1, WARN),
)
_INCORRECT_CONFIG = {
    2: "incorrect system GUID",
    3: "incorrect chassis serial number",
    4: "no partition",
    5: "insufficient NVLinks",
    6: "incompatible GPU firmware",
    7: "invalid location",
    8: "GPU state invalid",
}


@dataclass
class LinkReading:
    link: int
    active: bool
    version: int | None = None
    errors: dict[str, int | None] = field(default_factory=dict)


@dataclass
class GpuFabric:
    """What one GPU says about its fabric, links and PCIe replays (None: not supported)."""

    index: int
    name: str
    pci_bus_id: str | None
    fabric_state: int | None
    fabric_status: int | None
    health_mask: int | None
    clique_id: int | None
    links: list[LinkReading] | None
    pcie_replay: int | None

    @property
    def has_fabric(self) -> bool:
        return self.fabric_state not in (None, _NOT_SUPPORTED_STATE)


def nvswitch_pci_devices(opts: DoctorOptions) -> list[str]:
    """PCI addresses of NVSwitches (NVIDIA vendor, class 0x0680), read from sysfs."""
    return nvidia_pci_devices(opts, NVSWITCH_CLASS_PREFIX)


# --- reading -----------------------------------------------------------------


def _error_name(nvml: Any, code: int) -> str:
    text = getattr(nvml.NVMLError, "_errcode_to_string", {}).get(code)
    return f"{text} ({code})" if text else f"NVML error {code}"


def read_fabric_info(nvml: Any, handle: Any) -> tuple[int | None, int | None, int | None, int | None]:
    """(state, status, healthMask, cliqueId); state None where the GPU has no fabric query.

    The V call (driver 535+) carries the health mask; older libraries only have the
    deprecated call, which nvidia-ml-py answers with FUNCTION_NOT_FOUND when missing.
    """
    try:
        info = nvml.c_nvmlGpuFabricInfoV_t()
        nvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
        return int(info.state), int(info.status), int(info.healthMask), int(info.cliqueId)
    except AttributeError:
        pass  # nvidia-ml-py without the V binding
    except nvml.NVMLError as exc:
        if getattr(exc, "value", None) != _NVML_FUNCTION_NOT_FOUND:
            _reraise_fatal(exc)
            return None, None, None, None  # NOT_SUPPORTED: pre-Hopper, or no fabric
    try:
        old = nvml.c_nvmlGpuFabricInfo_t()
        nvml.nvmlDeviceGetGpuFabricInfo(handle, ctypes.byref(old))
    except AttributeError:
        return None, None, None, None
    except nvml.NVMLError as exc:
        _reraise_fatal(exc)
        return None, None, None, None
    return int(old.state), int(old.status), None, int(old.cliqueId)


def _reraise_fatal(exc: Exception) -> None:
    # A lost GPU is not "no fabric": let the caller report the GPU as unreadable.
    if getattr(exc, "value", None) in _FATAL:
        raise exc


def read_links(nvml: Any, handle: Any) -> list[LinkReading] | None:
    """Every NVLink's state and error counters; None when the GPU has no NVLink."""
    links: list[LinkReading] = []
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", _MAX_LINKS))):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml.NVMLError as exc:
            if link == 0 and getattr(exc, "value", None) == _NVML_NOT_SUPPORTED:
                return None
            break  # past the GPU's last link (INVALID_ARGUMENT), or a link NVML cannot read
        except AttributeError:
            return None
        reading = LinkReading(link, bool(state))
        if reading.active:
            reading.version = optional(nvml, "nvmlDeviceGetNvLinkVersion", handle, link)
            reading.errors = {
                name: optional(nvml, "nvmlDeviceGetNvLinkErrorCounter", handle, link, counter)
                for counter, name in NVLINK_COUNTERS.items()
            }
        links.append(reading)
    return links or None


def _bus_id(nvml: Any, handle: Any) -> str | None:
    info = optional(nvml, "nvmlDeviceGetPciInfo_v3", handle)
    if info is None:
        return None
    raw = info.busId
    return (raw.decode() if isinstance(raw, bytes) else str(raw)) or None


def read_gpu_fabric(nvml: Any, index: int) -> GpuFabric:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    state, status, mask, clique = read_fabric_info(nvml, handle)
    return GpuFabric(
        index=index,
        name=str(optional(nvml, "nvmlDeviceGetName", handle) or f"GPU {index}"),
        pci_bus_id=_bus_id(nvml, handle),
        fabric_state=state,
        fabric_status=status,
        health_mask=mask,
        clique_id=clique,
        links=read_links(nvml, handle),
        pcie_replay=optional(nvml, "nvmlDeviceGetPcieReplayCounter", handle),
    )


def fabric_manager_state(opts: DoctorOptions) -> tuple[str | None, str]:
    """(systemd's word for nvidia-fabricmanager, or None; why it could not be read)."""
    if not opts.path("/run/systemd/system").is_dir():
        return None, "systemd is not running here (a container?): the service state cannot be read"
    from envkit.process import run_process

    try:
        result = run_process(["systemctl", "is-active", FM_SERVICE], timeout_s=min(10.0, opts.timeout_s))
    except FileNotFoundError:
        return None, "systemctl is not installed"
    except OSError as exc:
        return None, f"systemctl could not run: {exc}"
    if result.timed_out:
        return None, "systemctl is-active timed out"
    word = result.stdout.strip().splitlines()[-1].strip() if result.stdout.strip() else ""
    return word or "unknown", ""


# --- judging -----------------------------------------------------------------


def _health_problems(mask: int | None) -> list[tuple[str, str]]:
    if not mask:
        return []
    found = [(status, name) for name, shift, bad, status in _HEALTH_FIELDS if (mask >> shift) & 0x3 == bad]
    config = (mask >> 8) & 0xF
    if config in _INCORRECT_CONFIG:
        found.append((FAIL, f"incorrect configuration: {_INCORRECT_CONFIG[config]}"))
    return found


def fabric_check(g: GpuFabric, nvml: Any, fm_state: str | None) -> Check:
    """One GPU's fabric: the state, the registration status, the health mask."""
    name = f"gpu{g.index} fabric"
    state = STATE_NAMES.get(g.fabric_state or 0, f"state {g.fabric_state}")
    details = {
        "state": state,
        "status": g.fabric_status,
        "health_mask": g.health_mask,
        "clique_id": g.clique_id,
    }
    fm_down = fm_state is not None and fm_state != "active"
    if g.fabric_state == _NOT_STARTED:
        return Check(
            AREA,
            name,
            FAIL,
            f"fabric not started: Fabric Manager has not brought this GPU into the NVSwitch fabric "
            f"(nvidia-fabricmanager: {fm_state or 'state unknown'}); CUDA fails with error 802",
            FM_START_HINT,
            details,
        )
    if g.fabric_state == _IN_PROGRESS:
        if fm_down:
            return Check(
                AREA,
                name,
                FAIL,
                f"fabric training in progress but nvidia-fabricmanager is {fm_state}",
                FM_START_HINT,
                details,
            )
        return Check(
            AREA,
            name,
            WARN,
            "fabric training in progress (Fabric Manager is bringing the GPU up)",
            "check again in a minute; if it stays here, see journalctl -u nvidia-fabricmanager",
            details,
        )
    if g.fabric_status not in (None, _NVML_SUCCESS):
        return Check(
            AREA,
            name,
            FAIL,
            f"fabric {state} but this GPU's registration failed: {_error_name(nvml, g.fabric_status)}",
            "restart nvidia-fabricmanager (sudo systemctl restart nvidia-fabricmanager), read "
            "/var/log/fabricmanager.log; reset the GPUs or reboot if it fails again",
            details,
        )
    problems = _health_problems(g.health_mask)
    details["health"] = [p[1] for p in problems]
    if problems:
        worst = FAIL if any(s == FAIL for s, _ in problems) else WARN
        return Check(
            AREA,
            name,
            worst,
            f"fabric {state}, clique {g.clique_id}; health: {', '.join(p[1] for p in problems)}",
            "read /var/log/fabricmanager.log and `nvidia-smi -q -d FABRIC`; check the NVLink "
            "errors below, then reset the GPU or reboot; RMA the baseboard if it persists",
            details,
        )
    return Check(AREA, name, OK, f"fabric {state} (status success), clique {g.clique_id}", details=details)


def nvlink_check(g: GpuFabric, nvswitch_host: bool) -> Check:
    name = f"gpu{g.index} nvlink"
    if not g.links:
        return Check(AREA, name, NOT_APPLICABLE, "no NVLink on this GPU")
    active = [x for x in g.links if x.active]
    down = [x.link for x in g.links if not x.active]
    details: dict[str, Any] = {"links": [asdict(x) for x in g.links], "active": len(active), "down": down}
    if not active:
        if nvswitch_host:
            return Check(
                AREA,
                name,
                FAIL,
                f"all {len(g.links)} NVLinks down (the fabric is not trained)",
                FM_START_HINT,
                details,
            )
        return Check(AREA, name, NOT_APPLICABLE, f"no NVLink connected ({len(g.links)} links, none active)")
    problems: list[tuple[str, str]] = []
    if down:
        problems.append(
            (
                FAIL if nvswitch_host else WARN,
                f"{len(down)} of {len(g.links)} links down (link {', '.join(map(str, down))})",
            )
        )
    totals = {n: sum(x.errors.get(n) or 0 for x in active) for n in NVLINK_COUNTERS.values()}
    details["error_totals"] = totals
    recovering = [x.link for x in active if (x.errors.get("recovery") or 0) > 0]
    if recovering:
        problems.append((WARN, f"link {', '.join(map(str, recovering))} had to recover (retrain)"))
    noisy = [
        f"link {x.link}: " + ", ".join(f"{v} {k}" for k, v in x.errors.items() if k != "recovery" and v)
        for x in active
        if any((v or 0) > NVLINK_NOISE_LIMIT for k, v in x.errors.items() if k != "recovery")
    ]
    if noisy:
        problems.append((WARN, "many link errors since the driver loaded: " + "; ".join(noisy)))
    summary = f"{len(active)}/{len(g.links)} links active"
    if not problems:
        counts = ", ".join(f"{v} {k}" for k, v in totals.items() if v)
        return Check(
            AREA, name, OK, summary + (f" ({counts} since load)" if counts else ", no errors"), "", details
        )
    worst = FAIL if any(s == FAIL for s, _ in problems) else WARN
    return Check(
        AREA,
        name,
        worst,
        f"{summary}; " + "; ".join(p for _, p in problems),
        "a down or erroring NVLink halves collective bandwidth: drain the node, reset the GPUs "
        "(nvidia-smi -r) or reboot, then rerun; if the link stays down, reseat/RMA the baseboard "
        "(nvidia-smi nvlink -s / -e show the links)",
        details,
    )


def pcie_replay_check(g: GpuFabric) -> Check:
    name = f"gpu{g.index} pcie replay"
    if g.pcie_replay is None:
        return Check(AREA, name, NOT_APPLICABLE, "PCIe replay counter not reported")
    details = {"pcie_replay": g.pcie_replay, "limit": PCIE_REPLAY_LIMIT}
    if g.pcie_replay > PCIE_REPLAY_LIMIT:
        return Check(
            AREA,
            name,
            WARN,
            f"{g.pcie_replay} PCIe replays since the driver loaded (a noisy link)",
            "the host<->GPU link resends packets: reseat the card/riser, check the slot and BIOS "
            "PCIe settings; a rising count under load means replace the riser",
            details,
        )
    return Check(AREA, name, OK, f"{g.pcie_replay} PCIe replays since the driver loaded", details=details)


def fabric_manager_check(
    opts: DoctorOptions, nvswitches: list[str], fabric_gpus: int
) -> tuple[Check, str | None]:
    """Is nvidia-fabricmanager active (only asked on NVSwitch hosts)?"""
    name = "fabricmanager"
    if not nvswitches and not fabric_gpus:
        return (
            Check(
                AREA,
                name,
                NOT_APPLICABLE,
                "no NVSwitch on this host (no NVIDIA PCI class 0x0680 device, no GPU in a fabric): "
                "Fabric Manager is not needed",
            ),
            None,
        )
    state, why = fabric_manager_state(opts)
    where = f"{len(nvswitches)} NVSwitch(es)" if nvswitches else f"{fabric_gpus} GPU(s) in an NVSwitch fabric"
    details = {"nvswitches": nvswitches, "service_state": state}
    if state is None:
        return Check(AREA, name, NOT_APPLICABLE, f"{where}; {why}", details=details), None
    if state == "active":
        return Check(AREA, name, OK, f"{FM_SERVICE} active ({where})", details=details), state
    return (
        Check(
            AREA,
            name,
            FAIL,
            f"{FM_SERVICE} is {state} on a host with {where}: CUDA cannot use the GPUs (error 802)",
            FM_START_HINT,
            details,
        ),
        state,
    )


# --- the probe ---------------------------------------------------------------


def probe_fabric(opts: DoctorOptions) -> ProbeResult:
    """NVSwitch fabric per GPU, Fabric Manager, NVLink state/errors, PCIe replays."""
    nvswitches = nvswitch_pci_devices(opts)
    facts: dict[str, Any] = {"nvswitch_count": len(nvswitches), "fabric": [], "fabricmanager": None}
    try:
        with nvml_session(opts.nvml) as nvml:
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError as exc:
                raise NvmlUnavailable.from_nvml_error(exc) from None
            gpus: list[GpuFabric] = []
            unreadable: list[Check] = []
            for i in range(count):
                try:
                    gpus.append(read_gpu_fabric(nvml, i))
                except nvml.NVMLError as exc:  # a GPU lost mid-query: the gpu probe fails it
                    unreadable.append(
                        Check(
                            AREA,
                            f"gpu{i} fabric",
                            NOT_APPLICABLE,
                            f"not readable: {NvmlUnavailable.from_nvml_error(exc).message} "
                            "(the gpu area reports it)",
                        )
                    )
    except NvmlUnavailable as exc:
        checks = [
            Check(
                AREA,
                "nvml",
                NOT_APPLICABLE,
                f"GPU fabric not readable: {exc.message} (the gpu area reports it)",
                details={"nvml_error_code": exc.code},
            )
        ]
        fm, state = fabric_manager_check(opts, nvswitches, 0)
        facts["fabricmanager"] = state
        return ProbeResult([*checks, fm], facts)

    fabric_gpus = sum(1 for g in gpus if g.has_fabric)
    fm, fm_state = fabric_manager_check(opts, nvswitches, fabric_gpus)
    facts.update(
        fabricmanager=fm_state,
        fabric=[
            {"index": g.index, "pci_bus_id": g.pci_bus_id, "state": STATE_NAMES.get(g.fabric_state or 0)}
            for g in gpus
        ],
    )
    nvswitch_host = bool(nvswitches or fabric_gpus)
    checks: list[Check] = [fm, *unreadable]
    if not gpus and not unreadable:
        checks.append(Check(AREA, "fabric", NOT_APPLICABLE, "NVML sees no GPU"))
    elif not fabric_gpus:
        why = "NVSwitch fabric not supported by these GPUs (PCIe boards, or pre-Hopper)"
        if nvswitches:
            why += "; Fabric Manager's state above is what tells"
        checks.append(Check(AREA, "fabric", NOT_APPLICABLE, why))
    for g in gpus:
        if fabric_gpus and g.fabric_state is not None:
            checks.append(fabric_check(g, nvml, fm_state))
        checks.append(nvlink_check(g, nvswitch_host))
        checks.append(pcie_replay_check(g))
    return ProbeResult(checks, facts)
