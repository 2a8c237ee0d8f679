"""docker_engine's promises on the converged target (no NVIDIA runtime asked for)."""

from __future__ import annotations

import json

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS


def test_docker_io_is_installed_running_and_enabled(host) -> None:
    assert host.package("docker.io").is_installed
    docker = host.service("docker")
    assert docker.is_running and docker.is_enabled
    assert host.run("docker info --format '{{.ServerVersion}}'").rc == 0


def test_daemon_json_is_the_merged_options_and_nothing_else(host) -> None:
    daemon = host.file("/etc/docker/daemon.json")
    assert daemon.user == "root" and daemon.group == "root" and daemon.mode == 0o644
    assert json.loads(daemon.content_string) == {
        "live-restore": True,
        "log-driver": "json-file",
        "log-opts": {"max-size": "100m", "max-file": "5"},
    }
    # Standalone: no toolkit role, so no nvidia runtime was registered.
    assert "nvidia" not in json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))


def test_users_join_the_docker_group(host) -> None:
    assert "docker" in host.user("ops").groups


def test_distro_source_adds_no_repository_and_holds_nothing(host) -> None:
    assert not host.file("/etc/apt/sources.list.d/envkit-docker.sources").exists
    assert not host.file("/etc/apt/keyrings/docker.asc").exists
    held = host.check_output("dpkg --get-selections | awk '$2 == \"hold\" {print $1}'")
    assert held.strip() == ""
