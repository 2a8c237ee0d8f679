"""Xid probe: the NVIDIA driver's error reports in the kernel log since boot, decoded per GPU.

The driver logs every GPU fault it sees as an Xid line in the kernel log, e.g.

    NVRM: Xid (PCI:0000:3b:00): 79, pid=1721, name=python, GPU has fallen off the bus.

The log comes from the journal (`journalctl -k -b`), else `dmesg`. A log this process
may not read (a container without CAP_SYSLOG, no journal) is `not_applicable` with the
reason, never an error: doctor cannot see it, which says nothing about the GPUs.
What each Xid means and what to do follows NVIDIA's Xid catalogue (Ampere and newer),
in envkit's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from envkit.doctor.model import FAIL, NOT_APPLICABLE, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions

AREA = "xid"
LOG_TIMEOUT_S = 30.0

# "NVRM: Xid (PCI:0000:3b:00): 79, pid=..., name=..., text" -- older drivers omit "PCI:",
# some omit the pid/name fields, a few print the function number too.
_XID_LINE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<bus>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})(?:\.[0-7])?\):\s*"
    r"(?P<xid>\d+)\s*,?\s*(?P<rest>.*)$"
)
_PID_NAME = re.compile(r"^pid=(?P<pid>'[^']*'|[^,\s]*),\s*(?:name=(?P<name>[^,]*),\s*)?(?P<text>.*)$")


@dataclass(frozen=True)
class XidInfo:
    """One catalogue entry: what the Xid means, how bad it is, what to do."""

    meaning: str
    status: str  # OK (benign alone), WARN (usually the application), FAIL (the GPU/node)
    fix: str


_RESET = "drain the GPU, reset it (sudo nvidia-smi -r -i N) or reboot"
_APP = "usually the application (a bad address, an out-of-bounds kernel): rerun it under compute-sanitizer"
_DIAG = "if it recurs across applications, run dcgmi diag -r 3 and RMA the GPU if that fails"

XID_CATALOGUE: dict[int, XidInfo] = {
    13: XidInfo(
        "graphics engine exception (an illegal instruction or address in a kernel)", WARN, f"{_APP}; {_DIAG}"
    ),
    31: XidInfo(
        "GPU memory page fault (MMU fault: a kernel touched unmapped memory)", WARN, f"{_APP}; {_DIAG}"
    ),
    32: XidInfo("invalid or corrupted push buffer stream", WARN, f"check PCIe (reseat, riser); {_DIAG}"),
    38: XidInfo("driver firmware error", FAIL, f"{_RESET}; update the driver if it recurs"),
    43: XidInfo("GPU stopped processing (the channel of a faulting application was reset)", WARN, _APP),
    45: XidInfo(
        "preemptive cleanup (a process ended or was killed while using the GPU)",
        OK,
        "none alone; read the Xid logged before it",
    ),
    48: XidInfo(
        "double-bit (uncorrectable) ECC error in GPU memory",
        FAIL,
        f"{_RESET} so the page is retired/row remapped; RMA the GPU if DBEs recur",
    ),
    61: XidInfo("internal micro-controller breakpoint/warning", WARN, f"{_RESET} if it recurs"),
    62: XidInfo("internal micro-controller halt", FAIL, f"{_RESET}; RMA the GPU if it recurs"),
    63: XidInfo(
        "ECC page retirement or row remapping recorded (takes effect at the next reset)",
        WARN,
        "reset the GPU (sudo nvidia-smi -r -i N) when it is idle to apply it",
    ),
    64: XidInfo(
        "ECC page retirement or row remapping failed",
        FAIL,
        f"{_RESET}; the GPU is out of spare memory rows: RMA it",
    ),
    68: XidInfo("video decoder (NVDEC) exception", WARN, f"{_APP}; {_DIAG}"),
    69: XidInfo("graphics engine class error", WARN, f"{_APP}; {_DIAG}"),
    74: XidInfo(
        "NVLink error",
        FAIL,
        "check the links (nvidia-smi nvlink -s / -e), reset the GPUs or reboot; reseat or RMA the "
        "baseboard if the link stays down",
    ),
    79: XidInfo(
        "GPU has fallen off the bus (it stopped answering on PCIe)",
        FAIL,
        "reboot the node; check the slot/riser, power cabling and cooling (nvidia-smi -q -d TEMPERATURE); "
        "RMA the GPU if it recurs",
    ),
    92: XidInfo("high single-bit ECC error rate", WARN, f"watch nvidia-smi -q -d ECC; {_DIAG}"),
    94: XidInfo(
        "contained ECC error (only the application using the bad memory was stopped)",
        WARN,
        "reset the GPU when it is idle so the row is remapped; RMA if it recurs",
    ),
    95: XidInfo(
        "uncontained ECC error (every application on the GPU is affected)",
        FAIL,
        f"{_RESET} now; RMA the GPU if it recurs",
    ),
    109: XidInfo("context switch timeout", WARN, f"{_APP}; {_DIAG}"),
    119: XidInfo(
        "GSP RPC timeout (the GPU's system processor stopped answering the driver)",
        FAIL,
        f"{_RESET}; update to the newest driver of the branch; RMA if it recurs",
    ),
    120: XidInfo(
        "GSP error (the GPU's system processor hit a fault)",
        FAIL,
        f"{_RESET}; update the driver; RMA if it recurs",
    ),
    121: XidInfo("C2C (chip-to-chip) link error", FAIL, f"{_RESET}; RMA if it recurs"),
    140: XidInfo("unrecovered ECC error in GPU memory", FAIL, f"{_RESET}; RMA the GPU if it recurs"),
    143: XidInfo(
        "GPU initialization failure", FAIL, f"{_RESET}; update the driver/firmware; RMA if it recurs"
    ),
    144: XidInfo("NVLink error (SAW MVB)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"),
    145: XidInfo("NVLink error (RLW)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"),
    146: XidInfo("NVLink error (TLW)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"),
    147: XidInfo("NVLink error (TREX)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"),
    148: XidInfo(
        "NVLink error (NVLPW control)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"
    ),
    149: XidInfo("NVLink error (NETIR)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"),
    150: XidInfo("NVLink error (MSE)", FAIL, "reset the GPUs or reboot; check nvidia-smi nvlink -e"),
    154: XidInfo(
        "GPU recovery action changed (the driver says the GPU needs a reset, a drain or a reboot)",
        FAIL,
        "do what the logged recovery action says (GPU reset / drain and reset / node reboot)",
    ),
}
_UNKNOWN = XidInfo(
    "an Xid envkit does not decode",
    WARN,
    "look it up in NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors)",
)
_RANK = {OK: 0, WARN: 1, FAIL: 2}


@dataclass
class XidEvent:
    bus: str  # "0000:3b:00": domain:bus:device, as NVRM prints it
    xid: int
    pid: str | None
    process: str | None
    text: str
    line: str


@dataclass
class KernelLog:
    source: str  # "journal" or "dmesg"
    lines: list[str]
    note: str = ""


class LogUnreadable(Exception):
    """The kernel log could not be read; the message says why."""


def normalize_bus(bus: str) -> str:
    """'00000000:3B:00.0' (NVML) or '0000:3b:00' (NVRM) -> '0000:3b:00'."""
    parts = bus.lower().split(".")[0].split(":")
    if len(parts) != 3:
        return bus.lower()
    domain, b, d = parts
    return f"{int(domain, 16):04x}:{int(b, 16):02x}:{int(d, 16):02x}"


def parse_xid_lines(lines: list[str]) -> list[XidEvent]:
    """Every Xid event in the kernel log lines, in order."""
    events = []
    for line in lines:
        m = _XID_LINE.search(line)
        if not m:
            continue
        rest = m.group("rest").strip()
        pid = name = None
        pm = _PID_NAME.match(rest)
        if pm:
            pid, name, rest = pm.group("pid"), pm.group("name"), pm.group("text")
            pid = pid.strip("'") if pid else None
        events.append(
            XidEvent(
                normalize_bus(m.group("bus")), int(m.group("xid")), pid, name, rest.strip(), line.strip()
            )
        )
    return events


def decode(xid: int) -> XidInfo:
    return XID_CATALOGUE.get(xid, _UNKNOWN)


# --- reading the log ---------------------------------------------------------


def _run(argv: list[str], timeout_s: float):
    from envkit.process import run_process

    return run_process(argv, timeout_s=timeout_s)


def read_kernel_log(timeout_s: float = LOG_TIMEOUT_S) -> KernelLog:
    """The kernel log since boot: the journal first, dmesg when the journal has none."""
    why: list[str] = []
    try:
        res = _run(["journalctl", "-k", "-b", "--no-pager", "-o", "short-iso"], timeout_s)
    except FileNotFoundError:
        why.append("journalctl not installed")
    except OSError as exc:
        why.append(f"journalctl could not run: {exc}")
    else:
        lines = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("-- ")]
        if res.timed_out:
            why.append(f"journalctl timed out after {timeout_s:.0f} s")
        elif res.returncode != 0:
            why.append(f"journalctl: {res.tail(1) or f'exit {res.returncode}'}")
        elif not lines:
            why.append("the journal holds no kernel messages of this boot")
        else:
            return KernelLog("journal", lines)
    try:
        res = _run(["dmesg"], timeout_s)
    except FileNotFoundError:
        why.append("dmesg not installed")
    except OSError as exc:
        why.append(f"dmesg could not run: {exc}")
    else:
        lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
        if res.timed_out:
            why.append(f"dmesg timed out after {timeout_s:.0f} s")
        elif res.returncode != 0:
            why.append(f"dmesg: {res.tail(1) or f'exit {res.returncode}'}")
        elif not lines:
            why.append("dmesg printed nothing")
        else:
            # The ring buffer is finite: on a long-running node it no longer reaches boot.
            note = (
                ""
                if any("Linux version" in ln for ln in lines[:50])
                else "the ring buffer no longer reaches back to boot"
            )
            return KernelLog("dmesg", lines, note)
    raise LogUnreadable("; ".join(why))


# --- judging -----------------------------------------------------------------


def gpu_bus_map(opts: DoctorOptions) -> dict[str, int]:
    """Normalised PCI bus id -> NVML GPU index; empty when NVML cannot say (best effort)."""
    from envkit.nvml import NvmlUnavailable, nvml_session

    found: dict[str, int] = {}
    try:
        with nvml_session(opts.nvml) as nvml:
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError:
                return found
            for i in range(count):
                try:
                    info = nvml.nvmlDeviceGetPciInfo_v3(nvml.nvmlDeviceGetHandleByIndex(i))
                except (nvml.NVMLError, AttributeError):
                    continue  # a GPU that fell off the bus is named by its bus id instead
                raw = info.busId
                found[normalize_bus(raw.decode() if isinstance(raw, bytes) else str(raw))] = i
    except NvmlUnavailable:
        pass
    return found


@dataclass
class GpuXids:
    bus: str
    index: int | None
    events: list[XidEvent] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"gpu{self.index}" if self.index is not None else f"pci {self.bus}"


def xid_gpu_check(g: GpuXids) -> Check:
    """All Xids of one GPU since boot folded into one check: the worst severity decides."""
    counts: dict[int, int] = {}
    sample: dict[int, XidEvent] = {}
    for ev in g.events:
        counts[ev.xid] = counts.get(ev.xid, 0) + 1
        sample.setdefault(ev.xid, ev)
    worst = max((decode(x).status for x in counts), key=lambda s: _RANK[s])
    order = sorted(counts, key=lambda x: (-_RANK[decode(x).status], x))
    parts = []
    for x in order:
        info = decode(x)
        times = f" x{counts[x]}" if counts[x] > 1 else ""
        parts.append(f"Xid {x}{times}: {info.meaning}")
    where = f"PCI {g.bus}" if g.index is not None else "GPU not visible to NVML"
    evidence = f"{len(g.events)} Xid event(s) since boot ({where}): " + "; ".join(parts)
    hint = "; ".join(dict.fromkeys(f"Xid {x}: {decode(x).fix}" for x in order if decode(x).status != OK))
    details: dict[str, Any] = {
        "pci_bus_id": g.bus,
        "gpu_index": g.index,
        "xids": {
            str(x): {
                "count": counts[x],
                "severity": str(decode(x).status),
                "meaning": decode(x).meaning,
                "fix": decode(x).fix,
                "known": x in XID_CATALOGUE,
                "first_message": sample[x].text[:300],
                "first_pid": sample[x].pid,
                "first_process": sample[x].process,
            }
            for x in order
        },
        "last_line": g.events[-1].line[:400],
    }
    return Check(AREA, f"{g.label} xid", worst, evidence, hint, details)


def xid_checks(log: KernelLog, bus_map: dict[str, int]) -> list[Check]:
    """The log check plus one check per GPU that logged an Xid."""
    events = parse_xid_lines(log.lines)
    note = f"; {log.note}" if log.note else ""
    summary_details = {"source": log.source, "kernel_lines": len(log.lines), "xid_events": len(events)}
    if not events:
        return [
            Check(
                AREA,
                "kernel log",
                OK,
                f"no Xid errors since boot ({log.source}, {len(log.lines)} kernel lines){note}",
                details=summary_details,
            )
        ]
    per_gpu: dict[str, GpuXids] = {}
    for ev in events:
        per_gpu.setdefault(ev.bus, GpuXids(ev.bus, bus_map.get(ev.bus))).events.append(ev)
    gpus = sorted(per_gpu.values(), key=lambda g: (g.index is None, g.index or 0, g.bus))
    checks = [
        Check(
            AREA,
            "kernel log",
            OK,
            f"{len(events)} Xid event(s) on {len(gpus)} GPU(s) since boot ({log.source}, "
            f"{len(log.lines)} kernel lines){note}",
            details=summary_details,
        )
    ]
    return checks + [xid_gpu_check(g) for g in gpus]


# --- the probe ---------------------------------------------------------------


def probe_xid(opts: DoctorOptions) -> ProbeResult:
    """Xid errors in the kernel log since boot, per GPU, with meaning and fix."""
    try:
        log = read_kernel_log(min(LOG_TIMEOUT_S, opts.timeout_s))
    except LogUnreadable as exc:
        return ProbeResult(
            [
                Check(
                    AREA,
                    "kernel log",
                    NOT_APPLICABLE,
                    f"kernel log not readable: {exc}",
                    "run doctor as root (or with CAP_SYSLOG), or on the host rather than in a container, "
                    "to see Xid errors",
                )
            ],
            {"source": None, "xid_events": 0},
        )
    checks = xid_checks(log, gpu_bus_map(opts))
    facts = {
        "source": log.source,
        "xid_events": checks[0].details.get("xid_events", 0),
        "by_gpu": {c.details["pci_bus_id"]: sorted(int(x) for x in c.details["xids"]) for c in checks[1:]},
    }
    has_fail = any(c.status == FAIL for c in checks)
    facts["worst"] = FAIL if has_fail else (WARN if any(c.status == WARN for c in checks) else OK)
    return ProbeResult(checks, facts)
