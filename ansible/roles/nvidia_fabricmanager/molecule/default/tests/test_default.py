"""nvidia_fabricmanager's promises: on the NVSwitch host, Fabric Manager and nscq
at exactly the installed driver's version (not the repository's newest), held,
the service enabled and active, from the signed CUDA repository; on the host
without NVSwitch, nothing at all."""

from __future__ import annotations

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS

DRIVER = "580.95.05-1"  # prepare.yml's; the repository's newest is 580.105.08-1
PACKAGES = ("nvidia-fabricmanager-580", "libnvidia-nscq-580")
REPO = "http://envkit-mol-fabric-mirror:8080/compute/cuda/repos/debian12/x86_64"


def is_hgx(host) -> bool:
    return "hgx" in host.backend.get_hostname()


def test_fabric_manager_matches_the_driver_and_is_held(host) -> None:
    out = host.run("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' libcuda1 " + " ".join(PACKAGES))
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert found["libcuda1"].startswith(DRIVER)
    if is_hgx(host):
        assert {p: found.get(p) for p in PACKAGES} == {p: f"{DRIVER} hold ok installed" for p in PACKAGES}
    else:
        assert not any(p in found for p in PACKAGES), found


def test_service_enabled_and_active_only_where_nvswitches_are(host) -> None:
    svc = host.service("nvidia-fabricmanager")
    if is_hgx(host):
        assert svc.is_enabled and svc.is_running
    else:
        assert not host.file("/usr/lib/systemd/system/nvidia-fabricmanager.service").exists


def test_nvlsm_not_installed_for_proprietary_modules(host) -> None:
    assert not host.package("nvlsm").is_installed


def test_repository_entry_is_the_drivers_signed_one(host) -> None:
    src = host.file("/etc/apt/sources.list.d/envkit-nvidia-cuda.sources")
    if not is_hgx(host):
        assert not src.exists  # nothing to install, nothing added
        return
    assert src.mode == 0o644 and src.contains(f"^URIs: {REPO}/$")
    assert src.contains("^Signed-By: /etc/apt/keyrings/nvidia-cuda.asc$")
    assert REPO in host.check_output("apt-cache policy nvidia-fabricmanager-580")
