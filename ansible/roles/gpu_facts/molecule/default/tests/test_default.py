"""gpu_facts' promises: the detector installed as a local fact, nothing else written."""

from __future__ import annotations

import json

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS


def test_local_fact_is_installed_executable_and_root_owned(host) -> None:
    fact = host.file("/etc/ansible/facts.d/nvidia_gpus.fact")
    assert fact.is_file and fact.mode == 0o755
    assert fact.user == "root" and fact.group == "root"
    assert host.file("/etc/ansible/facts.d").listdir() == ["nvidia_gpus.fact"]


def test_local_fact_reports_no_gpu_here(host) -> None:
    data = json.loads(host.check_output("/etc/ansible/facts.d/nvidia_gpus.fact"))
    assert data == {"gpus": [], "driver_loaded_version": "", "nvswitches": []}


def test_no_gpu_software_was_installed(host) -> None:
    for pkg in ("nvidia-smi", "docker.io", "nvidia-container-toolkit"):
        assert not host.package(pkg).is_installed, pkg
