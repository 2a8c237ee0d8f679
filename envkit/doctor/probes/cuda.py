"""CUDA toolkit probe: nvcc, and system or pip-installed cuDNN and NCCL."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from envkit.doctor.model import NOT_PRESENT, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions

_NVCC_RELEASE = re.compile(r"release (\d+\.\d+), V([0-9.]+)")


def cuda_homes() -> list[Path]:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    return [Path(h) for h in dict.fromkeys(h for h in homes if h)]


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in cuda_homes():
        candidate = home / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def parse_nvcc_version(text: str) -> tuple[str, str] | None:
    """`nvcc --version` output -> ('13.0', '13.0.88')."""
    m = _NVCC_RELEASE.search(text)
    return (m.group(1), m.group(2)) if m else None


def _site_nvidia_dirs() -> list[Path]:
    """Where pip wheels (nvidia-cudnn-cu12, nvidia-nccl-cu12, ...) unpack."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    return [purelib / "nvidia"]


def _header_version(paths: list[Path], prefix: str) -> str | None:
    """Read '<PREFIX>_MAJOR/MINOR/PATCH...' defines from the first header found."""
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        parts = []
        for key in ("MAJOR", "MINOR", "PATCHLEVEL" if prefix == "CUDNN" else "PATCH"):
            m = re.search(rf"#define {prefix}_{key}\s+(\d+)", text)
            if not m:
                break
            parts.append(m.group(1))
        if len(parts) == 3:
            return ".".join(parts)
    return None


def _ldconfig_libs(stem: str) -> list[str]:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split("=>")[-1].strip() for line in out.splitlines() if f"{stem}.so" in line})


def _pip_versions(prefix: str) -> dict[str, str]:
    """Installed wheels whose name starts with `prefix` ('nvidia-cudnn' -> nvidia-cudnn-cu12 9.1.0.70).

    Globs the dist-info folder names: importlib.metadata.distributions() parses
    every installed package's metadata, half a second on a big venv.
    """
    stem = prefix.replace("-", "_")
    found = {}
    for entry in dict.fromkeys(sys.path):
        if not entry or not os.path.isdir(entry):
            continue
        for info in glob.glob(os.path.join(entry, f"{stem}*.dist-info")):
            name, _, version = Path(info).name.removesuffix(".dist-info").partition("-")
            found[name.replace("_", "-").lower()] = version
    return found


def _library_check(label: str, stem: str, header: str, prefix: str, pip_prefix: str, role: str) -> Check:
    include_dirs = [Path("/usr/include"), *[h / "include" for h in cuda_homes()]]
    include_dirs += [d / label.lower() / "include" for d in _site_nvidia_dirs()]
    version = _header_version([d / header for d in include_dirs], prefix)
    libs = _ldconfig_libs(stem)
    for home in cuda_homes():
        libs += [str(p) for p in sorted((home / "lib64").glob(f"{stem}.so*"))]
    wheels = _pip_versions(pip_prefix)
    details = {"version": version, "libraries": sorted(set(libs)), "pip": wheels}
    if not (version or libs or wheels):
        return Check(
            "cuda",
            label,
            NOT_PRESENT,
            f"no system or pip {label}",
            f"only needed with a CUDA framework build; the CUDA wheels of PyTorch and "
            f"TensorFlow[and-cuda] bring their own {label} ({role})",
            details,
        )
    where = []
    if version:
        where.append(f"headers {version}")
    if libs:
        where.append(f"{len(set(libs))} library file(s)")
    if wheels:
        where.append(", ".join(f"{k} {v}" for k, v in wheels.items()))
    return Check("cuda", label, OK, f"{label}: " + "; ".join(where), details=details)


def probe_cuda(opts: DoctorOptions) -> ProbeResult:
    """The CUDA toolkit as a developer sees it (compiling extensions)."""
    checks: list[Check] = []
    facts: dict[str, str | None] = {"nvcc_version": None}
    nvcc = find_nvcc()
    if nvcc is None:
        checks.append(
            Check(
                "cuda",
                "nvcc",
                NOT_PRESENT,
                "no nvcc on PATH or under CUDA_HOME",
                "needed only to compile CUDA extensions; the framework wheels bring their CUDA runtime",
            )
        )
    else:
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=15).stdout
            parsed = parse_nvcc_version(out)
        except (OSError, subprocess.SubprocessError) as exc:
            out, parsed = str(exc), None
        if parsed is None:
            checks.append(
                Check(
                    "cuda",
                    "nvcc",
                    WARN,
                    f"{nvcc} did not report a release: {out.strip()[:120]}",
                    "a broken toolkit install: reinstall it or take it off PATH",
                )
            )
        else:
            facts["nvcc_version"] = parsed[0]
            checks.append(
                Check(
                    "cuda",
                    "nvcc",
                    OK,
                    f"CUDA toolkit {parsed[1]} (nvcc at {nvcc})",
                    details={"path": nvcc, "release": parsed[0], "version": parsed[1]},
                )
            )
    checks.append(
        _library_check("cuDNN", "libcudnn", "cudnn_version.h", "CUDNN", "nvidia-cudnn", "DNN kernels")
    )
    checks.append(_library_check("NCCL", "libnccl", "nccl.h", "NCCL", "nvidia-nccl", "multi-GPU collectives"))
    return ProbeResult(checks, facts)
