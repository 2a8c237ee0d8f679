"""Doctor's run options and the cheap facts every probe may need up front."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NVIDIA_PCI_VENDOR = "0x10de"
# PCI class 0x03xxxx: display controllers (VGA 0x0300, 3D controller 0x0302).
DISPLAY_CLASS_PREFIX = "0x03"


@dataclass
class DoctorOptions:
    """How one doctor run behaves; tests inject `nvml`, `fs_root` and `framework_scripts`."""

    require_gpu: bool = False
    deep: bool = False
    timeout_s: float = 60.0
    only: frozenset[str] = frozenset()
    skip: frozenset[str] = frozenset()
    python: str = sys.executable
    nvml: Any = None  # an nvidia-ml-py-shaped module; None: import pynvml
    fs_root: Path = Path("/")  # where /proc, /dev, /sys are read from
    framework_scripts: dict[str, Path] = field(default_factory=dict)  # area -> probe script
    deep_image: str | None = None

    def wants(self, area: str) -> bool:
        if self.only and area not in self.only:
            return False
        return area not in self.skip

    def path(self, absolute: str) -> Path:
        """`absolute` (e.g. '/proc/driver/nvidia/version') under fs_root."""
        return self.fs_root / absolute.lstrip("/")

    def to_dict(self) -> dict[str, Any]:
        return {
            "require_gpu": self.require_gpu,
            "deep": self.deep,
            "timeout_s": self.timeout_s,
            "only": sorted(self.only),
            "skip": sorted(self.skip),
        }


def nvidia_pci_devices(opts: DoctorOptions, class_prefix: str = DISPLAY_CLASS_PREFIX) -> list[str]:
    """PCI addresses of NVIDIA devices of a class (default: display/3D controllers), from sysfs.

    No driver needed. `class_prefix` "0x0680" gives the NVSwitches of an HGX board.
    """
    found = []
    base = opts.path("/sys/bus/pci/devices")
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for dev in entries:
        try:
            vendor = (dev / "vendor").read_text().strip()
            klass = (dev / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and klass.startswith(class_prefix):
            found.append(dev.name)
    return found


def nvidia_device_nodes(opts: DoctorOptions) -> list[str]:
    """/dev/nvidia* nodes (nvidiactl, nvidia-uvm, nvidia0, ...)."""
    dev = opts.path("/dev")
    try:
        return sorted(p.name for p in dev.iterdir() if p.name.startswith("nvidia"))
    except OSError:
        return []


def gpu_expected(opts: DoctorOptions) -> bool:
    """Does anything say this machine should have a working NVIDIA GPU?"""
    return bool(
        opts.require_gpu
        or nvidia_pci_devices(opts)
        or nvidia_device_nodes(opts)
        or opts.path("/proc/driver/nvidia").exists()
        or opts.path("/dev/dxg").exists()  # WSL2's GPU paravirtualisation device
        or _nvidia_visible_devices_requested()
    )


def _nvidia_visible_devices_requested() -> bool:
    """NVIDIA_VISIBLE_DEVICES names GPUs, and not merely as the image's own default.

    envkit's CUDA images set NVIDIA_VISIBLE_DEVICES=all for the Container Toolkit and
    record that default in ENVKIT_IMAGE_NVIDIA_VISIBLE_DEVICES: run without --gpus, the
    image's default says nothing about this machine (a GPU given shows /dev/nvidia*).
    """
    value = os.environ.get("NVIDIA_VISIBLE_DEVICES")
    if value in (None, "", "void", "none"):
        return False
    return value != os.environ.get("ENVKIT_IMAGE_NVIDIA_VISIBLE_DEVICES")
