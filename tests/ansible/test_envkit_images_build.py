"""The envkit role builds the matrix's images ON the provisioned host (`envkit_images_build: true`).

A real Docker-in-systemd target (envkit-molecule/target-docker:1: systemd as PID
1, Debian's docker.io with its nested engine on the vfs storage driver) gets
the envkit CLI from the controller's wheelhouse, the local base image as a
tarball (envkit_images), and the build context with a carried wheelhouse; the
role then runs `envkit images build --no-download` there. vfs copies every
layer, so a whole cpu row (a 1.5 GB venv copied per layer) is too heavy for
this target: the test builds the `envkit-wheel` stage of the same Dockerfile
(base -> python + tini -> builder venv -> envkit's wheel, built offline from
the carried setuptools/wheel), through the same role tasks and CLI path as a
full row. A second run must change nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.conftest import ANSIBLE_DIR, BIN, tool_env
from tests.conftest import ROOT

pytestmark = [pytest.mark.ansible, pytest.mark.container, pytest.mark.slow]

TARGET_IMAGE = "envkit-molecule/target-docker:1"
STAGE = "envkit-wheel"
# Container names start with this prefix (a shared engine: say whose they are).
PREFIX = os.environ.get("ENVKIT_TEST_NAME_PREFIX", "envkit-test")
# Every capability but CAP_SYS_RESOURCE (--privileged is refused on these hosts), as molecule.yml.
CAPS = [
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "CHOWN", "DAC_OVERRIDE",
    "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE",
    "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT",
    "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_TIME", "SYS_TTY_CONFIG",
    "WAKE_ALARM",
]  # fmt: skip


def _exec(container, command: list[str]) -> tuple[int, str]:
    code, out = container.exec_run(command)
    return code, out.decode("utf-8", "replace")


@pytest.fixture
def docker_target(docker_client, molecule_images) -> Iterator:
    """A booted Docker-in-systemd host whose nested engine answers."""
    container = docker_client.containers.run(
        TARGET_IMAGE,
        detach=True,
        name=f"{PREFIX}-images-build-{uuid.uuid4().hex[:8]}",
        cap_add=CAPS,
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    )
    try:
        deadline = time.monotonic() + 180
        state = ""
        while time.monotonic() < deadline:
            code, state = _exec(container, ["systemctl", "is-system-running"])
            if state.strip() in ("running", "degraded"):
                break
            time.sleep(2)
        while time.monotonic() < deadline:
            code, _ = _exec(container, ["docker", "info", "--format", "{{.Driver}}"])
            if code == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the nested Docker engine did not come up (systemd: {state.strip()})")
        yield container
    finally:
        container.remove(force=True)


def _playbook(tmp: Path, base_tar: Path, wheels: Path) -> Path:
    play = tmp / "build.yml"
    play.write_text(
        textwrap.dedent(
            f"""\
            - name: Build an image stage on the target with the envkit role
              hosts: targets
              gather_facts: true
              tasks:
                - name: Apply envkit with envkit_images_build
                  ansible.builtin.include_role:
                    name: envkit
                  vars:
                    envkit_source_dir: {ROOT}
                    envkit_controller_wheelhouse: {ROOT / "build" / "envkit-wheelhouse"}
                    envkit_images:
                      - ref: envkit/debian:bookworm
                        tarball: {base_tar}
                    envkit_images_build: true
                    envkit_images_build_rows: [{{name: pytorch, variant: cpu}}]
                    envkit_images_build_target: {STAGE}
                    envkit_images_build_wheelhouse: {wheels}
                    envkit_images_build_context_tar: {tmp / "image-context.tar"}
                    envkit_doctor: false
            """
        ),
        encoding="utf-8",
    )
    return play


def _run_play(play: Path, inventory: Path, tmp: Path, *extra: str) -> dict:
    env = tool_env(
        ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(play), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    try:
        report = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        pytest.fail(f"ansible-playbook printed no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    if proc.returncode != 0:
        failed = [
            f"{task['task']['name']}: {json.dumps(res)[-1500:]}"
            for p in report["plays"]
            for task in p["tasks"]
            for res in task["hosts"].values()
            if res.get("failed")
        ]
        pytest.fail(f"ansible-playbook exited {proc.returncode}: {failed or proc.stderr[-3000:]}")
    return report


def _changed(report: dict) -> list[str]:
    return [
        task["task"]["name"]
        for p in report["plays"]
        for task in p["tasks"]
        for res in task["hosts"].values()
        if res.get("changed")
    ]


def test_role_builds_an_image_stage_on_the_host_offline_and_idempotently(
    docker_client, docker_target, base_image, tmp_path: Path
):
    from envkit.matrix import load_matrix

    row = load_matrix().image("pytorch", "cpu")
    base_tar = tmp_path / "base.tar"
    with base_tar.open("wb") as fh:
        for chunk in docker_client.images.get(base_image).save(named=True):
            fh.write(chunk)
    # The carried wheelhouse: what the stage installs offline (envkit's build backend).
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    download = subprocess.run(
        [str(BIN / "python"), "-m", "pip", "download", "--quiet", "--only-binary=:all:",
         "--dest", str(wheels), "setuptools>=68", "wheel"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if download.returncode != 0:
        pytest.fail(f"cannot download setuptools/wheel: {download.stderr[-1000:]}")
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        f"targets:\n  hosts:\n    {docker_target.name}:\n"
        "      ansible_connection: community.docker.docker\n"
        "      ansible_python_interpreter: /usr/bin/python3\n",
        encoding="utf-8",
    )
    play = _playbook(tmp_path, base_tar, wheels)

    first = _run_play(play, inventory, tmp_path)
    assert any(name.endswith("Build the images on the target") for name in _changed(first)), _changed(first)
    tag = f"{row.tag}-{STAGE}"
    code, out = _exec(
        docker_target, ["docker", "image", "inspect", "--format", "{{json .Config.Labels}} {{.Id}}", tag]
    )
    assert code == 0, f"{tag} is not in the target's engine: {out}"
    code, wheel = _exec(docker_target, ["docker", "run", "--rm", "--entrypoint", "sh", tag, "-c", "ls /dist"])
    assert code == 0 and wheel.strip().startswith("envkit-") and wheel.strip().endswith(".whl"), wheel
    code, driver = _exec(docker_target, ["docker", "info", "--format", "{{.Driver}}"])
    assert driver.strip() == "vfs"  # the nested engine this stage was sized for
    code, log = _exec(docker_target, ["sh", "-c", "cat /opt/envkit/image-build/build/images/*.log"])
    assert f"--target {STAGE}" in log and "WHEELHOUSE=context" in log, log[:2000]

    second = _run_play(play, inventory, tmp_path)
    assert _changed(second) == [], "a second run must change nothing"
    code, again = _exec(docker_target, ["docker", "image", "inspect", "--format", "{{.Id}}", tag])
    assert again.strip() == out.split()[-1], "the second run must not rebuild the image"

    check = _run_play(play, inventory, tmp_path, "--check")
    assert _changed(check) == [], "check mode on the converged host must report no change"
