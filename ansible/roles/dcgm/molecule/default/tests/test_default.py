"""dcgm's promises: DCGM of the matrix's major version (the newest 4.x, never
DCGM 3's package), both packages at one version and held, nvidia-dcgm
(nv-hostengine) enabled and running, from the signed CUDA repository."""

from __future__ import annotations

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    role_default,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS

NEWEST = "1:4.4.2-1"  # the mirror's newest DCGM 4 (it also has 1:4.4.1-1 and DCGM 3)
REPO = "http://envkit-mol-dcgm-mirror:8080/compute/cuda/repos/debian12/x86_64"


def test_packages_of_the_major_at_one_version_and_held(host) -> None:
    major = role_default("dcgm", "dcgm_major_version")
    cuda = role_default("dcgm", "dcgm_cuda_major_version")
    pkgs = (f"datacenter-gpu-manager-{major}-core", f"datacenter-gpu-manager-{major}-cuda{cuda}")
    out = host.check_output("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' " + " ".join(pkgs))
    found = dict(line.split(" ", 1) for line in out.splitlines())
    assert found == {p: f"{NEWEST} hold ok installed" for p in pkgs}
    assert not host.package("datacenter-gpu-manager").is_installed  # DCGM 3


def test_host_engine_service_enabled_and_running(host) -> None:
    svc = host.service("nvidia-dcgm")
    assert svc.is_enabled and svc.is_running
    # The unit runs the host engine (the image has no ps: systemd's own answer).
    unit = host.check_output("systemctl show --property=ExecStart,MainPID nvidia-dcgm")
    assert "path=/usr/bin/nv-hostengine" in unit
    pid = int(next(line for line in unit.splitlines() if line.startswith("MainPID=")).split("=", 1)[1])
    assert pid > 0 and host.file(f"/proc/{pid}").is_directory


def test_repository_entry_is_signed_and_used(host) -> None:
    src = host.file("/etc/apt/sources.list.d/envkit-nvidia-cuda.sources")
    assert src.mode == 0o644 and src.contains(f"^URIs: {REPO}/$")
    assert src.contains("^Signed-By: /etc/apt/keyrings/nvidia-cuda.asc$")
    assert REPO in host.check_output("apt-cache policy datacenter-gpu-manager-4-core")
