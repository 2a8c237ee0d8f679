"""NVIDIA kernel driver probe: /proc/driver/nvidia/version and /dev/nvidia* nodes."""

from __future__ import annotations

import re

from envkit.doctor.model import FAIL, NOT_APPLICABLE, NOT_PRESENT, OK, WARN, Check, ProbeResult
from envkit.doctor.options import DoctorOptions, gpu_expected, nvidia_device_nodes, nvidia_pci_devices

_NVRM = re.compile(r"NVRM version:.*?Kernel Module(?:\s+for\s+\S+)?\s+([0-9][0-9.]+)")


def parse_nvrm_version(text: str) -> str | None:
    """'NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue ...' -> '550.54.15'."""
    m = _NVRM.search(text)
    return m.group(1) if m else None


def probe_driver(opts: DoctorOptions) -> ProbeResult:
    """Is the NVIDIA kernel module loaded, and are its device nodes there?"""
    pci = nvidia_pci_devices(opts)
    nodes = nvidia_device_nodes(opts)
    expected = gpu_expected(opts)
    version_file = opts.path("/proc/driver/nvidia/version")
    try:
        text = version_file.read_text(errors="replace")
    except OSError:
        text = ""
    version = parse_nvrm_version(text)
    facts = {"kernel_driver_version": version, "nvidia_pci_devices": pci, "device_nodes": nodes}
    pci_note = f"; NVIDIA PCI device(s): {', '.join(pci)}" if pci else ""

    if version is None and opts.path("/dev/dxg").exists():
        # WSL2: the Windows driver serves the GPU through /dev/dxg; no Linux module exists.
        wsl = Check(
            "driver",
            "kernel module",
            NOT_APPLICABLE,
            "WSL2: the GPU is driven by the Windows NVIDIA driver through /dev/dxg (no Linux module)",
            "update the driver on Windows; never install a Linux NVIDIA driver inside WSL",
        )
        nodes_check = Check("driver", "device nodes", OK, "/dev/dxg present", details={"nodes": ["dxg"]})
        return ProbeResult([wsl, nodes_check], facts)
    if version is None:
        if pci or expected:
            module = Check(
                "driver",
                "kernel module",
                FAIL,
                f"no NVIDIA kernel module loaded (/proc/driver/nvidia/version absent){pci_note}",
                "install the driver (make provision) or `sudo modprobe nvidia`; inside a container, "
                "start it with --gpus all (NVIDIA Container Toolkit)",
                {"pci_devices": pci},
            )
        else:
            module = Check(
                "driver",
                "kernel module",
                NOT_PRESENT,
                "no NVIDIA GPU on the PCI bus and no NVIDIA kernel module: a CPU-only machine",
                "nothing to do unless this machine should have a GPU",
            )
        nodes_check = Check(
            "driver",
            "device nodes",
            NOT_APPLICABLE if not nodes else WARN,
            f"/dev: {', '.join(nodes)}" if nodes else "no /dev/nvidia* nodes (no driver)",
            "" if not nodes else "device nodes without a loaded module: stale nodes or a broken install",
        )
        return ProbeResult([module, nodes_check], facts)

    open_module = "Open Kernel Module" in text
    flavour = "open kernel module" if open_module else "proprietary kernel module"
    module = Check(
        "driver",
        "kernel module",
        OK,
        f"NVIDIA driver {version} ({flavour}){pci_note}",
        details={"version": version, "open": open_module, "pci_devices": pci},
    )
    gpu_nodes = [n for n in nodes if re.fullmatch(r"nvidia\d+", n)]
    missing = [n for n in ("nvidiactl", "nvidia-uvm") if n not in nodes]
    if missing or not gpu_nodes:
        lacking = ", ".join(missing + ([] if gpu_nodes else ["nvidia<N>"]))
        nodes_check = Check(
            "driver",
            "device nodes",
            FAIL if "nvidiactl" in missing or not gpu_nodes else WARN,
            f"missing /dev/{lacking}; present: {', '.join(nodes) or 'none'}",
            "CUDA needs /dev/nvidia-uvm: `sudo modprobe nvidia-uvm` or `sudo nvidia-modprobe -u -c=0`; "
            "in a container pass the devices with --gpus",
            {"nodes": nodes},
        )
    else:
        nodes_check = Check(
            "driver",
            "device nodes",
            OK,
            f"{len(gpu_nodes)} GPU node(s), nvidiactl, nvidia-uvm",
            details={"nodes": nodes},
        )
    return ProbeResult([module, nodes_check], facts)
