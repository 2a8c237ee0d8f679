"""playbooks/site.yml end to end on one target: the upgrade the converge made
(the toolkit pinned at an old version by prepare.yml), what every role promises
on the converged machine, verify.yml, and the plays that must stop (a released
hold, doctor's findings, Secure Boot, accept's findings).
"""

from __future__ import annotations

import json

import pytest
from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    failed_messages,
    messages,
    run_playbook,
    runs,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
    total,
)

testinfra_hosts = TARGETS

TOOLKIT = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
# NVIDIA's CUDA repository (the stand-in): the driver's compute set with the open
# modules (no GPU older than Turing is known here), all of the matrix's branch.
DRIVER = ("nvidia-driver-cuda", "nvidia-persistenced", "nvidia-kernel-open-dkms", "libcuda1", "nvidia-smi")
DCGM = ("datacenter-gpu-manager-4-core", "datacenter-gpu-manager-4-cuda13")
MIRROR = "http://envkit-mol-site-mirror:8080"
CUDA_REPO = f"{MIRROR}/compute/cuda/repos/debian12/x86_64"
FAKE_MOKUTIL = "#!/bin/sh\necho 'SecureBoot enabled'\n"


@pytest.fixture(scope="module")
def matrix() -> dict[str, str]:
    import yaml
    from envkit_molecule import ROLES_DIR

    return yaml.safe_load((ROLES_DIR.parents[1] / "envkit" / "data" / "matrix.yaml").read_text())["ansible"]


def held(host) -> list[str]:
    out = host.check_output("dpkg --get-selections | awk '$2 == \"hold\" {print $1}'")
    return [name.split(":")[0] for name in out.split()]


def test_prepare_pinned_and_held_the_old_toolkit() -> None:
    prepare = runs("prepare.yml")[-1]
    assert messages(prepare, "Check the old toolkit is pinned and held") == ["All assertions passed"]


def test_converge_upgraded_the_four_toolkit_packages_together(host, matrix) -> None:
    first = runs("converge.yml", check=False)[0]
    install = [t for t in first["tasks"] if t["task"].endswith("Install the toolkit packages at one version")]
    assert [t["status"] for t in install] == ["changed"], install
    out = host.check_output("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' " + " ".join(TOOLKIT))
    wanted = matrix["nvidia_container_toolkit_version"]
    assert dict(line.split(" ", 1) for line in out.splitlines()) == {
        p: f"{wanted} hold ok installed" for p in TOOLKIT
    }


def test_container_is_never_rebooted_and_the_pending_reboot_is_said() -> None:
    last = runs("converge.yml", check=False)[-1]
    assert any("Reboot pending on" in m for m in messages(last, "Say a reboot is pending"))
    reboot = [t for t in last["tasks"] if t["task"].endswith("Reboot to load the new driver")]
    assert reboot and all(t["status"] == "skipped" for t in reboot)


def test_docker_is_active_and_daemon_json_has_the_runtime_and_merged_options(host) -> None:
    assert host.package("docker.io").is_installed
    assert host.service("docker").is_running and host.service("docker").is_enabled
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    assert "default-runtime" not in config
    assert config["live-restore"] is True
    assert config["log-opts"] == {"max-size": "100m", "max-file": "5"}
    assert "nvidia" in json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))
    assert "docker" in host.user("ops").groups


def test_nvidia_ctk_runtime_configure_agrees_with_docker_engine(host) -> None:
    before = json.loads(host.file("/etc/docker/daemon.json").content_string)
    host.check_output("cp /etc/docker/daemon.json /tmp/daemon.json")
    host.check_output("nvidia-ctk runtime configure --runtime=docker --config=/tmp/daemon.json")
    assert json.loads(host.file("/tmp/daemon.json").content_string) == before


def test_sources_use_signed_by_keyrings(host) -> None:
    toolkit = host.file("/etc/apt/sources.list.d/envkit-nvidia-container-toolkit.sources")
    assert toolkit.contains("^Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc$")
    assert toolkit.contains(f"^URIs: {MIRROR}/libnvidia-container/stable/deb/amd64$")
    cuda = host.file("/etc/apt/sources.list.d/envkit-nvidia-cuda.sources")
    assert cuda.mode == 0o644 and cuda.contains(f"^URIs: {CUDA_REPO}/$")
    assert cuda.contains("^Signed-By: /etc/apt/keyrings/nvidia-cuda.asc$")
    # One entry for the driver, DCGM (and Fabric Manager): no second Signed-By for one URL.
    entries = host.check_output(f"grep -rl '{CUDA_REPO}' /etc/apt/sources.list.d/").split()
    assert entries == ["/etc/apt/sources.list.d/envkit-nvidia-cuda.sources"], entries
    assert not host.file("/etc/apt/sources.list.d/envkit-debian-nonfree.sources").exists


def test_driver_toolkit_and_dcgm_packages_are_held(host, matrix) -> None:
    holds = held(host)
    for pkg in DRIVER:
        assert host.package(pkg).is_installed, pkg
        assert host.package(pkg).version.startswith(f"{matrix['nvidia_driver_branch']}."), pkg
    for pkg in DRIVER + TOOLKIT + DCGM:
        assert pkg in holds, f"{pkg} not held"


def test_dcgm_runs_and_no_fabric_manager_without_nvswitch(host, matrix) -> None:
    """DCGM of the matrix's major from the driver's repository; this host has no
    NVSwitch on its PCI bus, so Fabric Manager is neither installed nor its repository entry doubled."""
    assert DCGM[0] == f"datacenter-gpu-manager-{matrix['dcgm_major_version']}-core"
    assert DCGM[1].endswith(f"-cuda{matrix['dcgm_cuda_major_version']}")
    assert host.service("nvidia-dcgm").is_enabled and host.service("nvidia-dcgm").is_running
    versions = {host.package(p).version for p in DCGM}
    assert len(versions) == 1, versions
    assert not host.package(f"nvidia-fabricmanager-{matrix['nvidia_driver_branch']}").is_installed
    assert not host.package("nvlsm").is_installed
    assert not host.file("/usr/lib/systemd/system/nvidia-fabricmanager.service").exists
    first = runs("converge.yml", check=False)[0]
    assert any(
        "Fabric Manager is not needed" in m
        for m in messages(first, "Say why Fabric Manager is not installed")
    )


def test_nouveau_is_blacklisted_persistenced_enabled_and_the_gpu_fact_installed(host) -> None:
    conf = host.file("/etc/modprobe.d/blacklist-nouveau.conf")
    assert conf.contains("^blacklist nouveau$") and conf.mode == 0o644
    assert host.service("nvidia-persistenced").is_enabled
    fact = host.file("/etc/ansible/facts.d/nvidia_gpus.fact")
    assert fact.mode == 0o755
    assert json.loads(host.check_output("/etc/ansible/facts.d/nvidia_gpus.fact"))["gpus"] == []


def test_envkit_is_installed_offline_and_doctor_json_passes(host) -> None:
    assert host.file("/usr/local/bin/envkit").is_symlink
    freeze = host.check_output("/opt/envkit/venv/bin/pip freeze").lower()
    for dep in ("typer", "rich", "pyyaml", "jsonschema", "numpy", "nvidia-ml-py", "docker"):
        assert f"{dep}==" in freeze, dep
    assert "torch" not in freeze and "tensorflow" not in freeze
    doctor = host.run("envkit doctor --json")
    assert doctor.rc == 0, doctor.stdout[-2000:] + doctor.stderr[-2000:]
    assert json.loads(doctor.stdout)["checks"]


def test_image_tarball_was_loaded_and_removed(host) -> None:
    assert host.run("docker image inspect envkit-molecule/tiny:1").rc == 0
    assert not host.file("/opt/envkit/images/tiny.tar").exists


def test_verify_playbook_passes_and_catches_a_released_hold(host) -> None:
    run = run_playbook("playbooks/verify.yml")
    assert run["rc"] == 0 and total(run, "changed") == 0, failed_messages(run)
    # What an admin's `apt-mark unhold` does before an unattended upgrade: verify says so.
    host.check_output("apt-mark unhold libnvidia-container1")
    try:
        broken = run_playbook("playbooks/verify.yml")
    finally:
        host.check_output("apt-mark hold libnvidia-container1")
    assert broken["rc"] != 0
    assert any("is not held at one version" in m for m in failed_messages(broken)), failed_messages(broken)


def test_a_broken_stack_fails_the_play_with_doctors_findings() -> None:
    """Requiring a GPU on this GPU-less target: doctor exits 1 and the play says why."""
    run = run_playbook("playbooks/site.yml", "--tags", "envkit", "-e", "envkit_doctor_require_gpu=true")
    assert run["rc"] != 0 and total(run, "changed") == 0
    found = failed_messages(run)
    assert any("envkit doctor says the stack on" in m and "is not usable (exit 1" in m for m in found), found
    assert any("[gpu/" in m or "[driver/" in m for m in found), found


def test_secure_boot_policy_fail_stops_the_driver_role(host) -> None:
    """mokutil reporting Secure Boot (its real output line) stops the play before any change."""
    host.check_output(
        f"printf '{FAKE_MOKUTIL}' > /usr/local/sbin/mokutil && chmod +x /usr/local/sbin/mokutil"
    )
    try:
        run = run_playbook("playbooks/site.yml", "--tags", "nvidia_driver")
    finally:
        host.check_output("rm -f /usr/local/sbin/mokutil")
    assert run["rc"] != 0 and total(run, "changed") == 0
    assert any("Secure Boot is enabled on" in m for m in failed_messages(run)), failed_messages(run)


ACCEPT_CLI = "/opt/envkit/venv/bin/envkit"


def test_accept_tag_is_off_by_default() -> None:
    first = runs("converge.yml", check=False)[0]
    assert not [t for t in first["tasks"] if "Run envkit accept" in t["task"]]


def test_accept_tag_on_a_cpu_run_passes_and_reports_the_verdict() -> None:
    """`--tags accept` with a short CPU soak (the target's CLI has no torch): accepted."""
    run = run_playbook(
        "playbooks/site.yml", "--tags", "accept",
        "-e", '{"envkit_accept_args": ["--device", "cpu", "--duration", "5s", "--skip", "memory,allreduce"]}',
    )  # fmt: skip
    assert run["rc"] == 0 and total(run, "changed") == 0, failed_messages(run)
    said = messages(run, "Report accept's verdict")
    assert said and "accepted" in said[0], said


def test_accept_fails_the_host_with_the_verdicts_findings() -> None:
    """A wrong product injected into the soak (the CLI's test hook): the host fails, naming it."""
    run = run_playbook(
        "playbooks/site.yml", "--tags", "accept",
        "-e", f'{{"envkit_accept_command": ["env", "ENVKIT_ACCEPT_FAULTS=wrong=0", "{ACCEPT_CLI}"]}}',
        "-e", '{"envkit_accept_args": ["--device", "cpu", "--duration", "5s", "--skip", "memory,allreduce"]}',
    )  # fmt: skip
    assert run["rc"] != 0 and total(run, "changed") == 0
    found = failed_messages(run)
    assert any("envkit accept does not accept" in m and "(exit 1" in m and "[soak]" in m for m in found), (
        found
    )


def test_accept_on_a_gpu_host_refuses_a_cpu_only_run() -> None:
    """gpu_facts says GPU (forced here): site.yml asks for --device gpu, which a CLI
    without CUDA torch refuses; the host fails instead of being accepted on its CPU."""
    run = run_playbook("playbooks/site.yml", "--tags", "accept")
    assert run["rc"] != 0
    found = failed_messages(run)
    assert any("(exit 2" in m and "torch sees no CUDA GPU" in m for m in found), found
