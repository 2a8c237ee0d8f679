"""Host probe: OS, container/WSL, CPU, memory, disk, /dev/shm, memlock."""

from __future__ import annotations

import os
import platform
import resource
import shutil
from pathlib import Path

from envkit.doctor.model import OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions, gpu_expected

GIB = 1024**3
SHM_MIN_BYTES = 1 * GIB  # below this, DataLoader workers die with "Bus error"
DISK_MIN_BYTES = 20 * GIB  # one CUDA image plus a wheel cache
MEMLOCK_UNLIMITED = resource.RLIM_INFINITY


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def os_release(opts: DoctorOptions) -> str:
    for line in _read(opts.path("/etc/os-release")).splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def container_runtime(opts: DoctorOptions) -> str | None:
    """'docker', 'podman', 'kubernetes', 'containerd', 'lxc' or None on bare metal/VM."""
    if opts.path("/run/.containerenv").exists():
        return "podman"
    if opts.path("/.dockerenv").exists():
        return "docker"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    cgroup = _read(opts.path("/proc/1/cgroup"))
    for marker, name in (("kubepods", "kubernetes"), ("docker", "docker"), ("containerd", "containerd")):
        if marker in cgroup:
            return name
    # systemd-nspawn, podman and LXC set a lower-case `container` variable.
    marker = os.environ.get("container")  # noqa: SIM112
    if marker:
        return marker
    return None


def is_wsl(opts: DoctorOptions) -> bool:
    text = _read(opts.path("/proc/version")).lower()
    return "microsoft" in text or "wsl" in text or bool(os.environ.get("WSL_DISTRO_NAME"))


def cpu_model(opts: DoctorOptions) -> str:
    for line in _read(opts.path("/proc/cpuinfo")).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def meminfo(opts: DoctorOptions) -> dict[str, int]:
    values = {}
    for line in _read(opts.path("/proc/meminfo")).splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return values


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def probe_host(opts: DoctorOptions) -> ProbeResult:
    """Checks about the machine itself."""
    checks: list[Check] = []
    runtime = container_runtime(opts)
    wsl = is_wsl(opts)
    where = f"container ({runtime})" if runtime else ("WSL2" if wsl else "host")
    os_name = os_release(opts)
    os_hint = ""
    if wsl:
        os_hint = "WSL2: install the NVIDIA driver on Windows only; never a Linux driver inside WSL"
    checks.append(
        Check(
            "host",
            "os",
            OK,
            f"{os_name}, kernel {platform.release()}, {platform.machine()}, running in {where}",
            os_hint,
            {"os": os_name, "kernel": platform.release(), "container": runtime, "wsl": wsl},
        )
    )

    logical = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    checks.append(
        Check(
            "host",
            "cpu",
            OK,
            f"{cpu_model(opts)}, {usable} usable of {logical} logical cores",
            details={"model": cpu_model(opts), "logical_cores": logical, "usable_cores": usable},
        )
    )

    mem = meminfo(opts)
    total, avail = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
    mem_status, mem_hint = OK, ""
    if total and avail < 2 * GIB:
        mem_status, mem_hint = WARN, "less than 2 GiB free: close other jobs before training"
    checks.append(
        Check(
            "host",
            "memory",
            mem_status,
            f"{_gib(total)} total, {_gib(avail)} available",
            mem_hint,
            {"total_bytes": total, "available_bytes": avail},
        )
    )

    disk = shutil.disk_usage(Path.cwd())
    disk_status, disk_hint = OK, ""
    if disk.free < DISK_MIN_BYTES:
        disk_status = WARN
        disk_hint = f"under {_gib(DISK_MIN_BYTES)} free: CUDA images and wheel caches need more"
    checks.append(
        Check(
            "host",
            "disk",
            disk_status,
            f"{_gib(disk.free)} free of {_gib(disk.total)} at {Path.cwd()}",
            disk_hint,
            {"free_bytes": disk.free, "total_bytes": disk.total, "path": str(Path.cwd())},
        )
    )

    try:
        st = os.statvfs(opts.path("/dev/shm"))
        shm_size: int | None = st.f_frsize * st.f_blocks
    except OSError:
        shm_size = None
    checks.append(judge_shm(shm_size, runtime))
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    checks.append(judge_memlock(soft, gpu_expected(opts), runtime))
    return ProbeResult(checks, {"container": runtime, "wsl": wsl})


def judge_shm(size: int | None, runtime: str | None) -> Check:
    """/dev/shm of `size` bytes (None: missing), in a container `runtime` or on a host."""
    if size is None:
        return Check(
            "host",
            "shm",
            WARN,
            "/dev/shm is missing",
            "PyTorch DataLoader workers and NCCL need /dev/shm; mount a tmpfs there",
        )
    if size < SHM_MIN_BYTES:
        fix = (
            "restart the container with --shm-size=8g (or --ipc=host)"
            if runtime
            else "enlarge it: mount -o remount,size=8G /dev/shm"
        )
        return Check(
            "host",
            "shm",
            WARN,
            f"/dev/shm is {size / 2**20:.0f} MiB (Docker's default is 64 MiB)",
            f"DataLoader workers die with 'Bus error' when /dev/shm is under 1 GiB: {fix}",
            {"bytes": size},
        )
    return Check("host", "shm", OK, f"/dev/shm is {_gib(size)}", details={"bytes": size})


def judge_memlock(soft: int, expected_gpu: bool, runtime: str | None) -> Check:
    """The soft RLIMIT_MEMLOCK; only a GPU host needs it unlimited."""
    unlimited = soft == MEMLOCK_UNLIMITED
    shown = "unlimited" if unlimited else f"{soft // 1024} KiB"
    details = {"soft_bytes": None if unlimited else soft}
    if unlimited:
        return Check("host", "memlock", OK, f"ulimit -l {shown}", details=details)
    # Pinned buffers for GPUDirect RDMA / NCCL over InfiniBand need to lock memory.
    if expected_gpu:
        fix = "--ulimit memlock=-1" if runtime else "'* - memlock unlimited' in /etc/security/limits.conf"
        return Check(
            "host",
            "memlock",
            WARN,
            f"ulimit -l {shown}",
            f"NCCL over InfiniBand/GPUDirect needs unlimited locked memory: {fix}",
            details,
        )
    return Check(
        "host",
        "memlock",
        OK,
        f"ulimit -l {shown} (matters only for NCCL over InfiniBand on GPU hosts)",
        details=details,
    )
