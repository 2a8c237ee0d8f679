"""What a result was measured on: host CPU, BLAS libraries, threads, framework versions.

Everything here is read without extra dependencies: /proc and /sys for the CPU,
`numpy.show_config`, `torch.__config__` and TensorFlow's build info for the
libraries, and the loaded OpenBLAS itself (through ctypes) for its thread count.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import socket
from pathlib import Path
from typing import Any

import envkit

# SIMD features that decide CPU matmul speed, in /proc/cpuinfo's spelling (x86 and Arm).
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() as fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simd_flags() -> list[str]:
    """The matmul-relevant SIMD flags the CPU advertises."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    present = set(match.group(1).split()) if match else set()
    return [f for f in SIMD_FLAGS if f in present]


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache (the LLC) from sysfs, or None where unreadable."""
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if not match:
            continue
        size = int(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2)]
        best = max(best or 0, size)
    return best


def usable_cpus() -> int:
    """CPUs this process may run on (affinity), which is what BLAS threads compete for."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_context() -> dict[str, Any]:
    """Host facts shared by every bench kind."""
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "envkit": envkit.__version__,
        "cpu": {
            "model": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "simd": simd_flags(),
            "llc_bytes": last_level_cache_bytes(),
        },
    }


def _openblas_threads() -> int | None:
    """Ask the OpenBLAS that numpy loaded how many threads it uses (symbol names vary by build)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower() and ".so" in line}
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in (
            "scipy_openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_",
            "openblas_get_num_threads",
        ):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                return int(fn())
    return None


def numpy_context() -> dict[str, Any]:
    """numpy's version, BLAS library (from its build config) and BLAS thread count."""
    import numpy as np

    blas: dict[str, Any] = {}
    try:
        config = np.show_config(mode="dicts")
        blas = dict(config.get("Build Dependencies", {}).get("blas", {}))
    except Exception:  # old numpy without mode="dicts": the library stays unnamed
        blas = {}
    threads = _openblas_threads() if "openblas" in str(blas.get("name", "")).lower() else None
    env_threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return {
        "numpy": np.__version__,
        "blas": {
            "library": blas.get("name"),
            "version": blas.get("version"),
            "config": blas.get("openblas configuration"),
            "threads": threads if threads is not None else (int(env_threads) if env_threads else None),
        },
    }


def torch_context() -> dict[str, Any]:
    """torch's version, CUDA/cuDNN, CPU BLAS and SIMD level (from torch.__config__) and threads."""
    import torch

    shown = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", shown)
    capability = re.search(r"CPU capability usage: (\S+)", shown)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "cpu_blas": blas.group(1) if blas else None,
        "cpu_capability": capability.group(1) if capability else None,
        "threads": torch.get_num_threads(),
    }


def tensorflow_context() -> dict[str, Any]:
    """TensorFlow's version, CUDA/cuDNN build, oneDNN switch and op thread pools."""
    from envkit.bench.tf_kernel import tensorflow

    tf = tensorflow()
    info = dict(tf.sysconfig.get_build_info())
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    return {
        "tensorflow": tf.__version__,
        "cuda": info.get("cuda_version"),
        "cudnn": info.get("cudnn_version"),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86)"),
        # 0 means "let TensorFlow decide", which is one thread per usable CPU
        "threads": intra if intra else usable_cpus(),
    }
