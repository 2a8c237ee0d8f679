"""A fake /proc, /sys and /dev tree for doctor's driver probes (`DoctorOptions.fs_root`).

The files hold what a real NVIDIA host shows: the NVRM banner of
/proc/driver/nvidia/version, sysfs PCI vendor/class ids, /dev/nvidia* nodes
(plain files here: the probes only look at their names).
"""

from __future__ import annotations

from pathlib import Path

NVRM_PROPRIETARY = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Tue Jul  8 18:13:46 UTC 2025\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
NVRM_OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build  "
    "(dvs-builder@U16-I3-B08-1-1)  Tue Jul  8 18:04:54 UTC 2025\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)


def make_host_tree(
    root: Path,
    *,
    gpus: int = 0,
    driver: str | None = None,
    open_module: bool = False,
    nodes: list[str] | None = None,
) -> Path:
    """Build the tree under `root`; `nodes=None` means the nodes a loaded driver creates."""
    pci = root / "sys/bus/pci/devices"
    pci.mkdir(parents=True)
    # An Intel host bridge, always present, never a GPU.
    bridge = pci / "0000:00:00.0"
    bridge.mkdir()
    (bridge / "vendor").write_text("0x8086\n")
    (bridge / "class").write_text("0x060000\n")
    for i in range(gpus):
        dev = pci / f"0000:{0x18 + 0x10 * i:02x}:00.0"
        dev.mkdir()
        (dev / "vendor").write_text("0x10de\n")
        (dev / "class").write_text("0x030200\n")  # 3D controller, as data-centre GPUs report
    (root / "dev").mkdir()
    if driver is not None:
        proc = root / "proc/driver/nvidia"
        proc.mkdir(parents=True)
        banner = NVRM_OPEN if open_module else NVRM_PROPRIETARY
        (proc / "version").write_text(banner.format(v=driver))
        if nodes is None:
            nodes = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", *[f"nvidia{i}" for i in range(gpus)]]
    for name in nodes or []:
        (root / "dev" / name).write_text("")
    return root
