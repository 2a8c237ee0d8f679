"""nvidia_container_toolkit's promises: the four packages at the role's version,
held together, from a signed deb822 source; legacy entries gone; Docker lists
the runtime docker_engine registered, and NVIDIA's own tool agrees with it."""

from __future__ import annotations

import json

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    role_default,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS

PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
MIRROR = "http://envkit-mol-toolkit-mirror:8080/libnvidia-container/stable/deb/amd64"


def test_the_four_packages_are_at_the_default_version_and_held(host) -> None:
    version = role_default("nvidia_container_toolkit", "nvidia_container_toolkit_version")
    out = host.check_output("dpkg-query -W -f '${Package} ${Version} ${Status}\\n' " + " ".join(PACKAGES))
    found = dict(line.split(" ", 1) for line in out.splitlines())
    assert found == {pkg: f"{version} hold ok installed" for pkg in PACKAGES}


def test_source_is_deb822_signed_by_its_own_keyring(host) -> None:
    src = host.file("/etc/apt/sources.list.d/envkit-nvidia-container-toolkit.sources")
    assert src.mode == 0o644
    assert src.contains("^Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc$")
    assert src.contains(f"^URIs: {MIRROR}$")
    key = host.file("/etc/apt/keyrings/nvidia-container-toolkit.asc")
    assert key.mode == 0o644 and key.contains("BEGIN PGP PUBLIC KEY")
    # apt accepts the signed mirror: the candidate comes from it.
    assert MIRROR in host.check_output("apt-cache policy nvidia-container-toolkit")


def test_legacy_list_and_globally_trusted_key_are_gone(host) -> None:
    assert not host.file("/etc/apt/sources.list.d/nvidia-docker.list").exists
    assert not host.file("/etc/apt/trusted.gpg.d/nvidia-docker.asc").exists


def test_docker_lists_the_runtime_in_the_entry_docker_engine_wrote(host) -> None:
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"] == {"args": [], "path": "nvidia-container-runtime"}
    assert "default-runtime" not in config
    assert "nvidia" in json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))


def test_nvidia_ctk_runtime_configure_agrees_with_docker_engine(host) -> None:
    """NVIDIA's own tool run by hand finds nothing to change: the two never fight."""
    before = json.loads(host.file("/etc/docker/daemon.json").content_string)
    host.check_output("cp /etc/docker/daemon.json /tmp/daemon.json")
    host.check_output("nvidia-ctk runtime configure --runtime=docker --config=/tmp/daemon.json")
    assert json.loads(host.file("/tmp/daemon.json").content_string) == before
