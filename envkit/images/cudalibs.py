"""The CUDA shared libraries of an image: find them, spot a soname shipped twice, dlopen each.

Runs INSIDE an image, standard library only (it is bind-mounted into a build
step and piped into `python -` by the checks), so it imports nothing of envkit.

    python cudalibs.py scan            JSON: every CUDA library, and sonames found twice
    python cudalibs.py dedupe --keep /opt/venv
                                       remove copies outside the venv of sonames the
                                       venv also ships (an nvidia/cuda base + the wheels)
    python cudalibs.py dlopen          JSON: which CUDA libraries of the venv load

Two copies of one soname (the base's libcudart.so.13 and the wheel's) mean two
libraries in one process, or the wrong one, depending on the search order: the
build keeps the wheels' copies, which the frameworks' RPATHs point at.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import sys
from pathlib import Path

# Libraries of the CUDA toolkit, cuDNN, NCCL, NVSHMEM, cuSPARSELt and GDS (not the
# driver's libcuda.so, which the NVIDIA Container Toolkit mounts at run time).
CUDA_SONAME = re.compile(
    r"^lib(cudart|cublas|cublasLt|cudnn\w*|cufft\w*|curand|cusolver\w*|cusparse\w*|nccl\w*|nvrtc\w*"
    r"|nvJitLink|nvjitlink|nvToolsExt|nvtx\w*|cupti|nvperf\w*|nvshmem\w*|cufile\w*|npp\w*|nvjpeg"
    r"|nvblas|nvptxcompiler\w*|nvfatbin|nvvm|cuda_\w+)\.so(\.[\d.]+)?$"
)
# Everywhere a base image or apt puts libraries (the venv under /opt is the keep root).
SYSTEM_DIRS = ("/usr/lib", "/usr/lib64", "/usr/local", "/lib", "/lib64", "/opt")
DEFAULT_KEEP = "/opt/venv"
# Private copies, loaded by absolute path by their owner only, never found through the
# loader's search path: triton bundles CUPTI 12 (and its nvperf) for its proton
# profiler next to torch's CUDA 13 CUPTI. Reported, not counted as duplicates.
PRIVATE = {
    "/site-packages/triton/backends/nvidia/lib/": "triton's own CUPTI for its proton profiler",
}
DT_SONAME, DT_STRTAB, PT_LOAD, PT_DYNAMIC = 14, 5, 1, 2
# The driver's libraries, injected at run time (never shipped in an image).
DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")


def elf_soname(path: Path) -> str | None:
    """DT_SONAME of a 64-bit little-endian ELF shared object; None when it has none."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            phoff = struct.unpack_from("<Q", head, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            loads, dynamic = [], None
            for i in range(phnum):
                fh.seek(phoff + i * phentsize)
                p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack("<IIQQQQ", fh.read(40))
                if p_type == PT_LOAD:
                    loads.append((p_vaddr, p_offset, p_filesz))
                elif p_type == PT_DYNAMIC:
                    dynamic = (p_offset, p_filesz)
            if dynamic is None:
                return None
            fh.seek(dynamic[0])
            raw = fh.read(dynamic[1])
            strtab = soname = None
            for off in range(0, len(raw) - 15, 16):
                tag, val = struct.unpack_from("<qQ", raw, off)
                if tag == 0:
                    break
                if tag == DT_STRTAB:
                    strtab = val
                elif tag == DT_SONAME:
                    soname = val
            if strtab is None or soname is None:
                return None
            for vaddr, offset, size in loads:  # the string table's address -> file offset
                if vaddr <= strtab < vaddr + size:
                    fh.seek(offset + (strtab - vaddr) + soname)
                    return fh.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
    except (OSError, struct.error):
        return None
    return None


def shared_objects(root: Path) -> list[Path]:
    """Regular files named lib*.so* under `root` (symlinks are names, not copies)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith("lib") and ".so" in name:
                path = Path(dirpath) / name
                if not path.is_symlink() and path.is_file():
                    found.append(path)
    return found


def cuda_libraries(roots: list[str]) -> dict[str, list[str]]:
    """soname -> the real files carrying it, for every CUDA library under `roots`."""
    by_soname: dict[str, set[str]] = {}
    for root in roots:
        if not Path(root).is_dir():
            continue
        for path in shared_objects(Path(root)):
            soname = elf_soname(path) or path.name
            if CUDA_SONAME.match(soname):
                by_soname.setdefault(soname, set()).add(os.path.realpath(path))
    return {name: sorted(paths) for name, paths in sorted(by_soname.items())}


def private_reason(path: str) -> str | None:
    return next((why for part, why in PRIVATE.items() if part in path), None)


def duplicates(libs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Sonames carried by files in more than one directory (private copies aside).

    Files of one soname in ONE directory are aliases (libcupti.so, libcupti.so.12 and
    libcupti.so.2025.1.1: a wheel cannot hold symlinks, so it ships copies).
    """
    found = {}
    for soname, paths in libs.items():
        public = [p for p in paths if private_reason(p) is None]
        if len({os.path.dirname(p) for p in public}) > 1:
            found[soname] = public
    return found


def scan(keep: str = DEFAULT_KEEP) -> dict[str, object]:
    libs = cuda_libraries([keep, *SYSTEM_DIRS])
    private = {p: why for paths in libs.values() for p in paths if (why := private_reason(p))}
    return {"libraries": libs, "duplicates": duplicates(libs), "private": private}


def dedupe(keep: str = DEFAULT_KEEP) -> list[str]:
    """Remove the copies outside `keep` of sonames found inside it (and links to them)."""
    inside = cuda_libraries([keep])
    removed = []
    for soname, paths in cuda_libraries(list(SYSTEM_DIRS)).items():
        if soname not in inside:
            continue
        for path in paths:
            if path.startswith(keep.rstrip("/") + "/"):
                continue
            for link in Path(path).parent.iterdir():  # libx.so, libx.so.13 -> libx.so.13.0.96
                if link.is_symlink() and os.path.realpath(link) == path:
                    link.unlink()
            os.unlink(path)
            removed.append(path)
    return removed


def dlopen_all(keep: str = DEFAULT_KEEP) -> dict[str, object]:
    """Load every CUDA library of the venv; libraries that need a sibling retry after it loads."""
    pending = sorted(
        p for paths in cuda_libraries([keep]).values() for p in paths if private_reason(p) is None
    )
    loaded: list[str] = []
    errors: dict[str, str] = {}
    while pending:
        errors = {}
        still = []
        for path in pending:
            try:
                ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
                loaded.append(path)
            except OSError as exc:
                errors[path] = str(exc)
                still.append(path)
        if len(still) == len(pending):
            break
        pending = still
    # Linked against the driver itself (cuDNN 9.2x's runtime-compiled engines need
    # libcuda.so.1): the NVIDIA Container Toolkit mounts it with --gpus; a GPU-less
    # host cannot load these, and that is no fault of the image. Reported apart.
    needs_driver = {p: e for p, e in errors.items() if any(d in e for d in DRIVER_LIBS)}
    failed = {p: e for p, e in errors.items() if p not in needs_driver}
    return {"loaded": loaded, "failed": failed, "needs_driver": needs_driver}


def main(argv: list[str]) -> int:
    keep = DEFAULT_KEEP
    if "--keep" in argv:
        keep = argv[argv.index("--keep") + 1]
    command = argv[0] if argv else "scan"
    if command == "scan":
        print(json.dumps(scan(keep), indent=1))
    elif command == "dedupe":
        for path in dedupe(keep):
            print(f"cudalibs: removed {path} (the venv ships the same soname)")
    elif command == "dlopen":
        print(json.dumps(dlopen_all(keep), indent=1))
    else:
        print(f"usage: {Path(sys.argv[0]).name} scan|dedupe|dlopen [--keep DIR]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
