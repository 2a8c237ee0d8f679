"""envkit's promises: the CLI installed offline in its venv, on PATH, with the base
dependencies only, and `envkit doctor --json` passing on the target."""

from __future__ import annotations

import json

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS


def test_cli_is_on_path_from_the_venv(host) -> None:
    link = host.file("/usr/local/bin/envkit")
    assert link.is_symlink and link.linked_to == "/opt/envkit/venv/bin/envkit"
    assert host.check_output("envkit --version").startswith("envkit ")


def test_venv_holds_the_base_dependencies_only(host) -> None:
    freeze = host.check_output("/opt/envkit/venv/bin/pip freeze").lower()
    for dep in ("typer", "rich", "pyyaml", "jsonschema", "numpy", "nvidia-ml-py", "docker"):
        assert f"{dep}==" in freeze, dep
    assert "torch" not in freeze and "tensorflow" not in freeze


def test_wheelhouse_is_root_owned_and_no_image_dir_was_made(host) -> None:
    tar = host.file("/opt/envkit/wheelhouse.tar")
    assert tar.user == "root" and tar.mode == 0o644
    # envkit_images is empty: nothing of the image path is written.
    assert not host.file("/opt/envkit/images").exists


def test_doctor_json_passes_on_the_target(host) -> None:
    doctor = host.run("envkit doctor --json")
    assert doctor.rc == 0, doctor.stdout[-2000:] + doctor.stderr[-2000:]
    report = json.loads(doctor.stdout)
    assert report["checks"], report
