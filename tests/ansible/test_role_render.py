"""What the roles would install on a real GPU server, rendered from its facts.

The Molecule targets are Debian 12 containers without a GPU: the Ubuntu paths,
the CUDA-repository path and the GPU-model decisions never run there. Here
each role's planning tasks (tasks/plan.yml: facts in, a plan out, nothing run
on the host) are rendered by ansible-playbook for stand-in hosts whose facts
are those of Ubuntu 22.04/24.04 and Debian 12 GPU servers (PCI device IDs as
sysfs reports them), and the plans are checked against the packages and files
that Ubuntu's `ubuntu-drivers install --gpgpu`, NVIDIA's driver installation
guide and the distributions' package metadata name (issue 17, defects 1, 3-7).
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible.conftest import ANSIBLE_DIR, BIN, tool_env

pytestmark = pytest.mark.ansible

RENDER_DIR = Path(__file__).resolve().parent / "render"

# PCI device IDs (sysfs `device`) of real boards, by architecture.
H100_SXM = "0x2330"  # Hopper
B200 = "0x2901"  # Blackwell: open kernel modules only
V100_SXM2 = "0x1db1"  # Volta: proprietary modules only
A100_SXM4 = "0x20b0"  # Ampere
T4 = "0x1eb8"  # Turing: the first architecture the open modules support

UBUNTU_2404 = {
    "distribution": "Ubuntu",
    "distribution_major_version": "24",
    "distribution_version": "24.04",
    "distribution_release": "noble",
    "os_family": "Debian",
    "architecture": "x86_64",
    "kernel": "6.8.0-45-generic",
}
UBUNTU_2204 = {**UBUNTU_2404, "distribution_major_version": "22", "distribution_version": "22.04",
               "distribution_release": "jammy", "kernel": "5.15.0-126-generic"}  # fmt: skip
DEBIAN_12 = {
    "distribution": "Debian",
    "distribution_major_version": "12",
    "distribution_version": "12.8",
    "distribution_release": "bookworm",
    "os_family": "Debian",
    "architecture": "x86_64",
    "kernel": "6.1.0-28-amd64",
}


def host(facts: dict[str, Any], gpus: list[str], **role_vars: Any) -> dict[str, Any]:
    """An inventory host standing in for a server with `facts` and these GPUs."""
    return {"render_facts": facts, "nvidia_driver_gpu_device_ids": gpus, **role_vars}


HOSTS: dict[str, dict[str, Any]] = {
    # site.yml registers the NVIDIA runtime with Docker on GPU hosts.
    "ubuntu2404-h100": host(UBUNTU_2404, [H100_SXM] * 8, docker_engine_nvidia_runtime=True),
    "ubuntu2404-aws-a100": host({**UBUNTU_2404, "kernel": "6.8.0-1018-aws"}, [A100_SXM4] * 8),
    # Jammy's HWE kernel: Canonical's modules follow the HWE image metapackage.
    "ubuntu2204-hwe-v100": host(
        {**UBUNTU_2204, "kernel": "6.8.0-45-generic"},
        [V100_SXM2] * 4,
        nvidia_driver__image_metapackages=["linux-image-generic-hwe-22.04"],
    ),
    "ubuntu2204-t4": host(UBUNTU_2204, [T4]),
    "ubuntu2404-cuda-h100": host(
        UBUNTU_2404, [H100_SXM], nvidia_driver_source="cuda", docker_engine_cdi=True
    ),
    "ubuntu2404-b200-forced-proprietary": host(
        UBUNTU_2404, [B200], nvidia_driver_kernel_modules="proprietary"
    ),
    "ubuntu2404-mixed-v100-b200": host(UBUNTU_2404, [V100_SXM2, B200]),
    "debian12-h100": host(DEBIAN_12, [H100_SXM] * 8),
    "debian12-upgrades-off": host(DEBIAN_12, [H100_SXM], nvidia_driver_unattended_upgrades="off"),
    "debian12-cloud-v100": host({**DEBIAN_12, "kernel": "6.1.0-28-cloud-amd64"}, [V100_SXM2]),
    "debian12-distro-580": host(DEBIAN_12, [H100_SXM], nvidia_driver_source="distro"),
    "debian12-distro-535-open": host(
        DEBIAN_12,
        [A100_SXM4],
        nvidia_driver_source="distro",
        nvidia_driver_branch="535",
        nvidia_driver_kernel_modules="open",
    ),
    "debian12-distro-535-pinned": host(
        DEBIAN_12,
        [A100_SXM4],
        nvidia_driver_source="distro",
        nvidia_driver_branch="535",
        nvidia_driver_version="535.247.01-1~deb12u1",
    ),
}

ROLES = [
    {"name": "nvidia_driver", "plan": "nvidia_driver_plan"},
    {"name": "docker_engine", "plan": "docker_engine_daemon_config"},
]

# The reboot decision and the post-reboot check, from a driver state as
# tasks/module_state.yml reads it (sysfs, /proc/driver/nvidia, modinfo, nvidia-smi).
DECISIONS = [
    {"name": "nvidia_driver", "key": "reboot", "tasks": ["plan.yml", "reboot_decision.yml"],
     "plan": "nvidia_driver_reboot_required"},
    {"name": "nvidia_driver", "key": "loaded", "tasks": ["plan.yml", "loaded_check.yml"],
     "plan": "nvidia_driver_module_state"},
]  # fmt: skip


def state(
    loaded: str, loaded_flavour: str, installed: str, installed_flavour: str, gpus: str = ""
) -> dict[str, str]:
    """nvidia_driver_module_state as tasks/module_state.yml publishes it."""
    return {"loaded_version": loaded, "loaded_flavour": loaded_flavour, "installed_version": installed,
            "installed_flavour": installed_flavour, "newest_kernel": "", "newest_kernel_module": "", "gpus": gpus}  # fmt: skip


def decided(name: str, module_state: dict[str, str], gpus: int = 8) -> tuple[str, dict[str, Any]]:
    """An Ubuntu 24.04 H100 host (open modules planned) with this driver state."""
    return name, host(UBUNTU_2404, [H100_SXM] * gpus, nvidia_driver_module_state=module_state,
                      render_roles=DECISIONS)  # fmt: skip


HOSTS.update(
    [
        # Same version, other flavour: a switch to the open modules needs a reboot too.
        decided("reboot-flavour-switch", state("580.95.05", "proprietary", "580.95.05", "open")),
        decided("reboot-nothing-to-do", state("580.95.05", "open", "580.95.05", "open", gpus="8")),
        decided("reboot-none-loaded", state("", "", "580.95.05", "open")),
        decided("reboot-new-version", state("580.82.07", "open", "580.95.05", "open")),
        # modinfo found no module for the running kernel: the plan's flavour is what is installed.
        decided("reboot-flavour-from-plan", state("580.95.05", "proprietary", "580.95.05", "")),
        decided("after-reboot-a-gpu-missing", state("580.95.05", "open", "580.95.05", "open", gpus="7")),
        decided("after-reboot-no-module", state("", "", "580.95.05", "open")),
    ]
)


@cache
def rendered(tmp_root: str) -> dict[str, dict[str, Any]]:
    """Run render.yml once for every host; {host: {role: plan}}."""
    out = Path(tmp_root)
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": str(BIN / "python"),
                "render_out": str(out),
                "render_roles": ROLES,
            },
            "hosts": HOSTS,
        }
    }
    (out / "inventory.yml").write_text(yaml.safe_dump(inventory))
    env = tool_env(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
        ANSIBLE_LIBRARY=str(RENDER_DIR / "library"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="yaml",
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(out / "inventory.yml"), str(RENDER_DIR / "render.yml")],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    plans: dict[str, dict[str, Any]] = {}
    for name in HOSTS:
        plans[name] = {}
        for role in ROLES + DECISIONS:
            key = role.get("key", role["name"])
            path = out / name / f"{key}.json"
            if path.is_file():
                plans[name][key] = json.loads(path.read_text())
    if proc.returncode != 0 and not any(plans.values()):
        pytest.fail(
            f"render.yml failed (rc={proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
        )
    return plans


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return rendered(str(tmp_path_factory.mktemp("render")))


def plan(plans: dict[str, dict[str, Any]], name: str, role: str = "nvidia_driver") -> dict[str, Any]:
    found = plans[name].get(role)
    assert found is not None, f"{role} wrote no plan for {name} (no tasks/plan.yml?)"
    assert not (isinstance(found, dict) and "failed" in found), f"{role} refused {name}: {found['failed']}"
    return found


def refusal(plans: dict[str, dict[str, Any]], name: str, role: str = "nvidia_driver") -> str:
    found = plans[name].get(role)
    assert found is not None, f"{role} wrote nothing for {name} (no tasks/plan.yml?)"
    assert isinstance(found, dict) and "failed" in found, (
        f"{role} accepted {name}, which it must refuse: {found}"
    )
    return found["failed"]


# --- Ubuntu: what `ubuntu-drivers install --gpgpu` installs (defects 3 and 6) ---


def test_ubuntu_installs_the_headless_server_set_with_signed_open_modules(plans) -> None:
    p = plan(plans, "ubuntu2404-h100")
    assert p["source"] == "distro"
    assert p["open_kernel_modules"] is True  # Hopper: open modules, NVIDIA's default from R560
    assert p["packages"] == ["nvidia-headless-no-dkms-580-server-open", "nvidia-utils-580-server"]
    # Canonical's signed prebuilt modules for the kernel flavour first (Secure Boot), DKMS second.
    assert p["kernel_module_packages"] == [
        "linux-modules-nvidia-580-server-open-generic",
        "nvidia-dkms-580-server-open",
    ]
    # Never the desktop metapackage: it pulls X and GL onto a compute node.
    assert not [pkg for pkg in p["packages"] if pkg.startswith("nvidia-driver-")]


def test_ubuntu_cloud_kernel_gets_the_cloud_flavour_modules_and_headers(plans) -> None:
    p = plan(plans, "ubuntu2404-aws-a100")
    assert p["kernel_flavour"] == "aws"
    assert p["kernel_module_packages"][0] == "linux-modules-nvidia-580-server-open-aws"
    assert p["headers_packages"] == ["linux-headers-aws", "linux-headers-6.8.0-1018-aws"]


def test_ubuntu_hwe_kernel_follows_the_hwe_metapackage_and_volta_stays_proprietary(plans) -> None:
    p = plan(plans, "ubuntu2204-hwe-v100")
    assert p["open_kernel_modules"] is False  # Volta has no open-module support
    assert p["kernel_flavour"] == "generic-hwe-22.04"
    assert p["packages"] == ["nvidia-headless-no-dkms-580-server", "nvidia-utils-580-server"]
    assert p["kernel_module_packages"] == [
        "linux-modules-nvidia-580-server-generic-hwe-22.04",
        "nvidia-dkms-580-server",
    ]
    assert p["headers_packages"] == ["linux-headers-generic-hwe-22.04", "linux-headers-6.8.0-45-generic"]


def test_turing_is_the_first_architecture_with_open_modules(plans) -> None:
    assert plan(plans, "ubuntu2204-t4")["open_kernel_modules"] is True


def test_blackwell_refuses_proprietary_modules(plans) -> None:
    msg = refusal(plans, "ubuntu2404-b200-forced-proprietary")
    assert "Blackwell" in msg and "nvidia_driver_kernel_modules" in msg, msg


def test_no_flavour_drives_volta_and_blackwell_together(plans) -> None:
    msg = refusal(plans, "ubuntu2404-mixed-v100-b200")
    assert "0x1db1" in msg and "0x2901" in msg, msg


# --- Headers for the next kernel too (defect 1) ---


def test_debian_installs_the_flavour_headers_metapackage(plans) -> None:
    p = plan(plans, "debian12-h100")
    assert p["headers_packages"] == ["linux-headers-amd64", "linux-headers-6.1.0-28-amd64"]
    cloud = plan(plans, "debian12-cloud-v100")
    assert cloud["headers_packages"] == ["linux-headers-cloud-amd64", "linux-headers-6.1.0-28-cloud-amd64"]


# --- The CUDA repository: branch pinned, components held (defect 4) ---


def test_debian_defaults_to_nvidias_repository_for_the_matrix_branch(plans) -> None:
    p = plan(plans, "debian12-h100")
    assert p["source"] == "cuda"  # Debian 12's non-free stops at 535
    assert p["branch"] == "580"
    assert p["packages"] == ["nvidia-driver-cuda", "nvidia-persistenced"]
    assert p["kernel_module_packages"] == ["nvidia-kernel-open-dkms"]
    assert plan(plans, "debian12-cloud-v100")["kernel_module_packages"] == ["nvidia-kernel-dkms"]


def test_cuda_repository_branch_is_pinned_and_distribution_packages_kept_out(plans) -> None:
    for name in ("debian12-h100", "ubuntu2404-cuda-h100"):
        prefs = plan(plans, name)["apt_preferences"]
        records = [dict(line.split(": ", 1) for line in rec.splitlines() if ": " in line and not line.startswith("#"))
                   for rec in prefs.strip().split("\n\n")]  # fmt: skip
        branch = [r for r in records if r.get("Pin") == "version 580.*"]
        assert branch and all(int(r["Pin-Priority"]) >= 1000 for r in branch), prefs
        assert any("nvidia" in r["Package"] for r in branch), prefs
        # A distribution's same-named packages (another branch) lose to NVIDIA's origin.
        origin = [r for r in records if r.get("Pin", "").startswith("release o=")]
        assert origin and all(0 < int(r["Pin-Priority"]) < 1000 for r in origin), prefs


def test_cuda_repository_holds_every_component_of_the_branch(plans) -> None:
    p = plan(plans, "debian12-h100")
    # cuda-drivers-<branch> and friends depend on their components without an
    # upper bound: holding metapackages holds nothing, so every installed
    # package of the branch is held.
    assert p["hold_version_prefix"] == "580."
    assert set(p["packages"]) <= set(p["hold_packages"])


def test_ubuntu_cuda_repository_uses_nvidias_names_and_dkms(plans) -> None:
    p = plan(plans, "ubuntu2404-cuda-h100")
    assert p["packages"] == ["nvidia-headless-no-dkms-580-open", "nvidia-utils-580"]
    assert p["kernel_module_packages"] == ["nvidia-dkms-580-open"]


def test_distribution_packages_are_not_pinned_from_nvidias_repository(plans) -> None:
    assert plan(plans, "ubuntu2404-h100")["apt_preferences"] == ""


# --- Debian's distribution branch (defect 5) ---


def test_debian_distro_source_refuses_a_branch_debian_does_not_ship(plans) -> None:
    msg = refusal(plans, "debian12-distro-580")
    assert "535" in msg and "580" in msg and "nvidia_driver_source: cuda" in msg, msg


def test_a_pinned_version_applies_to_the_packages_of_that_version_only(plans) -> None:
    p = plan(plans, "debian12-distro-535-pinned")
    pinned = {pkg.split("=")[0]: pkg.partition("=")[2] for pkg in p["packages"] + p["kernel_module_packages"]}
    assert pinned["nvidia-smi"] == "535.247.01-1~deb12u1"
    assert pinned["libcuda1"] == "535.247.01-1~deb12u1"
    # bookworm's nvidia-open-kernel-dkms lags its user space (535.261.03 against
    # 535.309.01, read 2026-12-04): the distro source keeps the proprietary modules.
    assert p["open_kernel_modules"] is False
    assert pinned["nvidia-kernel-dkms"] == "535.247.01-1~deb12u1"
    # nvidia-persistenced is versioned on its own (535.171.04-1~deb12u1 in bookworm).
    assert pinned["nvidia-persistenced"] == ""
    assert p["hold_version_prefix"] == "535."


def test_debian_distro_source_refuses_forced_open_modules(plans) -> None:
    msg = refusal(plans, "debian12-distro-535-open")
    assert "nvidia_driver_kernel_modules: proprietary" in msg and "nvidia_driver_source: cuda" in msg, msg


# --- Persistence mode (defect 7) ---


def test_persistence_mode_dropin_everywhere(plans) -> None:
    for name in ("ubuntu2404-h100", "ubuntu2204-hwe-v100", "debian12-h100"):
        dropin = plan(plans, name)["persistenced_dropin"]
        exec_lines = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
        # The package's ExecStart is cleared, then replaced without --no-persistence-mode.
        assert exec_lines[0] == "ExecStart=", dropin
        assert len(exec_lines) == 2 and "--no-persistence-mode" not in exec_lines[1], dropin
        assert exec_lines[1].startswith("ExecStart=/usr/bin/nvidia-persistenced"), dropin


# --- The reboot decision compares version and flavour (defect 3) ---


def test_a_flavour_switch_at_the_same_version_reboots(plans) -> None:
    assert plan(plans, "reboot-flavour-switch", role="reboot") is True
    assert plan(plans, "reboot-flavour-from-plan", role="reboot") is True
    assert plan(plans, "reboot-nothing-to-do", role="reboot") is False


def test_a_new_version_or_no_module_reboots(plans) -> None:
    assert plan(plans, "reboot-new-version", role="reboot") is True
    assert plan(plans, "reboot-none-loaded", role="reboot") is True


# --- After the reboot: the module really loaded and sees every GPU (defect 2) ---


def test_after_reboot_the_check_passes_when_the_driver_sees_every_gpu(plans) -> None:
    assert plan(plans, "reboot-nothing-to-do", role="loaded")["gpus"] == "8"


def test_after_reboot_a_missing_gpu_fails_the_play(plans) -> None:
    msg = refusal(plans, "after-reboot-a-gpu-missing", role="loaded")
    assert "7 of 8 GPUs" in msg, msg


def test_after_reboot_a_module_that_did_not_load_fails_the_play(plans) -> None:
    msg = refusal(plans, "after-reboot-no-module", role="loaded")
    assert "no NVIDIA module" in msg and "580.95.05" in msg, msg


# --- Fleet: unattended-upgrades never move the driver, the toolkit or the kernel ---


def test_unattended_upgrades_keep_driver_toolkit_and_kernel_out(plans) -> None:
    conf = plan(plans, "ubuntu2404-h100")["unattended_upgrades"]
    entries = re.findall(r'^\s+"([^"]+)";$', conf, re.MULTILINE)
    assert "Unattended-Upgrade::Package-Blacklist {" in conf, conf
    for name in ("nvidia-utils-580-server", "libnvidia-container1", "nvidia-container-toolkit", "libcuda1",
                 "linux-image-6.8.0-45-generic", "linux-modules-nvidia-580-server-open-generic"):  # fmt: skip
        assert any(re.match(entry, name) for entry in entries), (name, entries)
    assert not any(re.match(entry, "openssl") for entry in entries)
    off = plan(plans, "debian12-upgrades-off")["unattended_upgrades"]
    assert 'APT::Periodic::Unattended-Upgrade "0";' in off, off


# --- Fleet defaults: daemon.json for GPU jobs ---


def test_docker_daemon_defaults_gpu_jobs_need(plans) -> None:
    config = plan(plans, "ubuntu2404-h100", role="docker_engine")
    assert config["default-shm-size"] == "1G"
    memlock = config["default-ulimits"]["memlock"]
    assert memlock == {"Name": "memlock", "Soft": -1, "Hard": -1}  # RDMA registers pinned memory
    assert config["live-restore"] is True
    assert "features" not in config  # CDI on only where asked (docker.io 20.10 has none)
    # Without the NVIDIA runtime (no GPU host), daemon.json stays Docker's own.
    plain = plan(plans, "debian12-h100", role="docker_engine")
    assert "default-shm-size" not in plain and "default-ulimits" not in plain


def test_docker_cdi_feature_where_asked(plans) -> None:
    config = plan(plans, "ubuntu2404-cuda-h100", role="docker_engine")
    assert config["features"] == {"cdi": True}
