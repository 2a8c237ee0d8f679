"""site.yml on a real Debian 12 systemd container: converge, upgrade, idempotence, check mode.

One converge sequence per session (conftest.converged) on one target; every
test here reads its runs or inspects the target with testinfra.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.ansible.conftest import (
    OLD_TOOLKIT,
    TINY_IMAGE,
    TOOLKIT_PACKAGES,
    Converged,
    dpkg_versions,
    matrix_ansible,
    read_json,
    run_playbook,
)

pytestmark = [pytest.mark.ansible, pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

# nvidia_driver_debian_packages: Debian non-free's headless compute set.
DRIVER_PACKAGES = (
    "nvidia-kernel-dkms",
    "nvidia-smi",
    "libcuda1",
    "nvidia-persistenced",
    "firmware-nvidia-gsp",
)
FAKE_MOKUTIL = "#!/bin/sh\necho 'SecureBoot enabled'\n"


def test_first_converge_installs_the_old_toolkit_pinned_and_held(converged: Converged) -> None:
    assert converged.first.recap()["failed"] == 0
    for pkg in TOOLKIT_PACKAGES:
        assert converged.toolkit_after_first[pkg] == f"{OLD_TOOLKIT} hold ok installed", pkg


def test_upgrade_moves_the_four_toolkit_packages_together(converged: Converged) -> None:
    run = converged.upgrade
    assert run.rc == 0, run.tail()
    assert run.recap()["changed"] > 0
    wanted = matrix_ansible()["nvidia_container_toolkit_version"]
    now = dpkg_versions(converged.lab.target, TOOLKIT_PACKAGES)
    assert now == {pkg: f"{wanted} hold ok installed" for pkg in TOOLKIT_PACKAGES}


def test_second_run_changes_nothing(converged: Converged) -> None:
    run = converged.idempotent
    assert run.rc == 0, run.tail()
    recap = run.recap()
    assert recap["changed"] == 0, f"not idempotent: {run.changed_tasks()}"
    assert recap["failed"] == 0 and recap["unreachable"] == 0
    print("\n" + run.recap_text())


def test_check_diff_on_a_provisioned_host_is_clean(converged: Converged) -> None:
    run = converged.check
    assert run.rc == 0, run.tail()
    assert run.recap()["changed"] == 0, f"--check would change: {run.changed_tasks()}"


def test_container_is_never_rebooted_and_the_pending_reboot_is_said(converged: Converged) -> None:
    # The module cannot load in a container: the driver is installed, none is loaded.
    assert "Reboot pending on envkit-ansible-target" in converged.idempotent.output
    reboot_task = (
        r"TASK \[nvidia_driver : Reboot to load the new driver\] \**\nskipping: \[envkit-ansible-target\]"
    )
    assert re.search(reboot_task, converged.idempotent.output)


def test_docker_is_installed_active_and_owns_a_daemon_json_with_the_nvidia_runtime(target_host) -> None:
    assert target_host.package("docker.io").is_installed
    docker = target_host.service("docker")
    assert docker.is_running and docker.is_enabled
    config = read_json(target_host, "/etc/docker/daemon.json")
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    assert "default-runtime" not in config
    # docker_engine_daemon_options merged with the inventory's extra options.
    assert config["live-restore"] is True
    assert config["log-opts"] == {"max-size": "100m", "max-file": "5"}
    runtimes = json.loads(target_host.check_output("docker info --format '{{json .Runtimes}}'"))
    assert "nvidia" in runtimes
    assert "docker" in target_host.user("ops").groups


def test_nvidia_ctk_runtime_configure_agrees_with_docker_engine(target_host) -> None:
    """NVIDIA's own tool run by hand finds nothing to change: the two never fight."""
    before = read_json(target_host, "/etc/docker/daemon.json")
    target_host.check_output("cp /etc/docker/daemon.json /tmp/daemon.json")
    target_host.check_output("nvidia-ctk runtime configure --runtime=docker --config=/tmp/daemon.json")
    assert read_json(target_host, "/tmp/daemon.json") == before


def test_sources_use_signed_by_keyrings_and_legacy_entries_are_gone(target_host) -> None:
    toolkit = target_host.file("/etc/apt/sources.list.d/envkit-nvidia-container-toolkit.sources")
    assert toolkit.contains("^Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc$")
    assert toolkit.contains("^URIs: http://envkit-ansible-mirror:8080/libnvidia-container/stable/deb/amd64$")
    assert target_host.file("/etc/apt/keyrings/nvidia-container-toolkit.asc").contains("BEGIN PGP PUBLIC KEY")
    nonfree = target_host.file("/etc/apt/sources.list.d/envkit-debian-nonfree.sources")
    assert nonfree.contains("^Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg$")
    assert nonfree.contains("^Components: contrib non-free non-free-firmware$")
    # The seeded nvidia-docker list and its globally trusted key were removed.
    assert not target_host.file("/etc/apt/sources.list.d/nvidia-docker.list").exists
    assert not target_host.file("/etc/apt/trusted.gpg.d/nvidia-docker.asc").exists
    # apt accepts the signed mirror: the candidate comes from it.
    policy = target_host.check_output("apt-cache policy nvidia-container-toolkit")
    assert "http://envkit-ansible-mirror:8080/libnvidia-container/stable/deb/amd64" in policy


def test_driver_packages_are_real_debian_ones_and_held(target_host) -> None:
    # Multi-Arch: same packages (libcuda1) are listed as name:arch.
    selections = target_host.check_output("dpkg --get-selections | awk '$2 == \"hold\" {print $1}'")
    held = [name.split(":")[0] for name in selections.split()]
    for pkg in DRIVER_PACKAGES:
        assert target_host.package(pkg).is_installed, pkg
        assert pkg in held, f"{pkg} not held"
    for pkg in TOOLKIT_PACKAGES:
        assert pkg in held, f"{pkg} not held"
    # A held package survives an upgrade attempt: apt keeps it back.
    sim = target_host.run("apt-get -s --only-upgrade install nvidia-smi")
    assert "held" in sim.stdout.lower() or "is already the newest" in sim.stdout


def test_nouveau_is_blacklisted_and_persistenced_enabled(target_host) -> None:
    conf = target_host.file("/etc/modprobe.d/blacklist-nouveau.conf")
    assert conf.contains("^blacklist nouveau$") and conf.contains("^options nouveau modeset=0$")
    assert target_host.service("nvidia-persistenced").is_enabled


def test_gpu_local_fact_is_installed(target_host) -> None:
    fact = target_host.file("/etc/ansible/facts.d/nvidia_gpus.fact")
    assert fact.is_file and fact.mode == 0o755
    data = json.loads(target_host.check_output("/etc/ansible/facts.d/nvidia_gpus.fact"))
    assert data["gpus"] == []  # no GPU on this machine (the converge forced the GPU path)


def test_envkit_is_installed_offline_and_doctor_runs(target_host) -> None:
    assert target_host.file("/usr/local/bin/envkit").is_symlink
    version = target_host.check_output("envkit --version")
    assert version.startswith("envkit ")
    # The venv came from the wheelhouse only: base dependencies, no training extras.
    freeze = target_host.check_output("/opt/envkit/venv/bin/pip freeze").lower()
    for dep in ("typer", "rich", "pyyaml", "jsonschema", "numpy", "nvidia-ml-py", "docker"):
        assert f"{dep}==" in freeze, dep
    assert "torch" not in freeze and "tensorflow" not in freeze
    doctor = target_host.run("envkit doctor --json")
    assert doctor.rc == 0, doctor.stdout[-2000:] + doctor.stderr[-2000:]
    report = json.loads(doctor.stdout)
    assert report["checks"], report


def test_image_tarball_was_loaded(target_host) -> None:
    assert target_host.run(f"docker image inspect {TINY_IMAGE}").rc == 0
    assert not target_host.file("/opt/envkit/images/tiny.tar").exists


def test_verify_playbook_passes_and_catches_a_released_hold(converged: Converged, target_host) -> None:
    run = run_playbook(converged.lab.inventory, "playbooks/verify.yml")
    assert run.rc == 0, run.tail()
    assert run.recap()["changed"] == 0
    # What an admin's `apt-mark unhold` does before an unattended upgrade: verify says so.
    target_host.check_output("apt-mark unhold libnvidia-container1")
    try:
        broken = run_playbook(converged.lab.inventory, "playbooks/verify.yml")
    finally:
        target_host.check_output("apt-mark hold libnvidia-container1")
    assert broken.rc != 0
    assert "is not held at one version" in broken.output


def test_a_broken_stack_fails_the_play_with_doctors_findings(converged: Converged) -> None:
    """Requiring a GPU on this GPU-less target: doctor exits 1 and the play says why."""
    require_gpu = ("-e", "envkit_doctor_require_gpu=true")
    run = run_playbook(converged.lab.inventory, "playbooks/site.yml", "--tags", "envkit", *require_gpu)
    assert run.rc != 0
    assert "envkit doctor says the stack on envkit-ansible-target is not usable (exit 1" in run.output
    assert re.search(r"\[(gpu|driver)/[^\]]+\] ", run.output), run.tail()
    assert run.recap()["changed"] == 0


def test_secure_boot_policy_fail_stops_the_driver_role(converged: Converged, target_host) -> None:
    """mokutil reporting Secure Boot (its real output line) stops the play before any change."""
    target_host.check_output(f'printf "{FAKE_MOKUTIL}" > /usr/local/sbin/mokutil')
    target_host.check_output("chmod +x /usr/local/sbin/mokutil")
    try:
        failed = run_playbook(converged.lab.inventory, "playbooks/site.yml", "--tags", "nvidia_driver")
    finally:
        target_host.check_output("rm -f /usr/local/sbin/mokutil")
    assert failed.rc != 0
    assert "Secure Boot is enabled on envkit-ansible-target" in failed.output
    assert failed.recap()["changed"] == 0


def test_cuda_repository_branch_in_check_mode(converged: Converged, target_host) -> None:
    """NVIDIA's CUDA repository (unreachable here: its URLs point at the mirror) in
    --check --diff: the deb822 source it would write, and nothing written."""
    mirror = "http://envkit-ansible-mirror:8080"
    run = run_playbook(
        converged.lab.inventory, "playbooks/site.yml", "--tags", "nvidia_driver", "--check", "--diff",
        "-e", "nvidia_driver_source=cuda",
        "-e", f"nvidia_driver_cuda_repo_url={mirror}/cuda/debian12/x86_64",
        "-e", f"nvidia_driver_cuda_key_url={mirror}/libnvidia-container/gpgkey",
    )  # fmt: skip
    assert run.rc == 0, run.tail()
    assert "+Signed-By: /etc/apt/keyrings/nvidia-cuda.asc" in run.output
    assert f"+URIs: {mirror}/cuda/debian12/x86_64/" in run.output
    assert f"cuda-drivers-{matrix_ansible()['nvidia_driver_branch']}" in run.output
    assert not target_host.file("/etc/apt/sources.list.d/envkit-nvidia-cuda.sources").exists
