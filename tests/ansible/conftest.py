"""Real Ansible targets for the role tests: systemd containers and a signed mirror.

One target container (Debian 12, systemd as PID 1) is converged once per
session and shared by the idempotence, check-mode and testinfra tests; a
second container serves a locally built, signed apt repository that stands in
for NVIDIA's (unreachable here) exactly as an air-gapped site's mirror would.
Both images are built from the local base image and cached by content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, skip_or_fail

ANSIBLE_DIR = ROOT / "ansible"
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
NETWORK = "envkit-ansible-net"
TARGET = "envkit-ansible-target"
MIRROR = "envkit-ansible-mirror"
MIRROR_URL = f"http://{MIRROR}:8080"
# The toolkit is first converged at OLD_TOOLKIT, then at the matrix's version.
OLD_TOOLKIT = "1.17.7-1"
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
TINY_IMAGE = "envkit-ansible/tiny:1"
# The host lacks CAP_SYS_RESOURCE, so --privileged is refused ("unable to apply
# caps"); every other capability plus unconfined seccomp/apparmor/system paths
# is what systemd and a nested dockerd need.
TARGET_RUN_ARGS = [
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--security-opt=systempaths=unconfined",
    "--tmpfs=/run",
    "--tmpfs=/run/lock",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
]


def matrix_ansible() -> dict[str, str]:
    """The `ansible:` table of THE version matrix."""
    data = yaml.safe_load((ROOT / "envkit" / "data" / "matrix.yaml").read_text())
    return data["ansible"]


@dataclass
class PlaybookRun:
    """One ansible-playbook run: exit status, full output and its recap counts."""

    args: list[str]
    rc: int
    output: str

    def recap(self, host: str = TARGET) -> dict[str, int]:
        """Counts of the PLAY RECAP line of `host` (ok, changed, failed, ...)."""
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        if not match:
            raise AssertionError(f"no PLAY RECAP line for {host}:\n{self.tail()}")
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}

    def recap_text(self) -> str:
        """The PLAY RECAP block as Ansible printed it."""
        return self.output[self.output.rindex("PLAY RECAP") :].strip()

    def changed_tasks(self) -> list[str]:
        """Task headers followed by a `changed:` result (for failure messages)."""
        tasks, current = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                current = line
            elif line.startswith("changed:") and current not in tasks:
                tasks.append(current)
        return tasks

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run_playbook(inventory: Path, playbook: str, *extra: str, timeout: int = 900) -> PlaybookRun:
    """Run a playbook of ansible/ against `inventory`, the way `make provision` does."""
    args = [str(BIN / "ansible-playbook"), "-i", str(inventory), playbook, *extra]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    proc = subprocess.run(
        args, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return PlaybookRun(args=args, rc=proc.returncode, output=proc.stdout + proc.stderr)


def docker(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def build_cached(dockerfile: Path, name: str, base_image: str) -> str:
    """Build `dockerfile` once: the tag carries a hash of the file and the base image id."""
    base_id = docker("image", "inspect", "--format", "{{.Id}}", base_image).stdout.strip()
    digest = hashlib.sha256(dockerfile.read_bytes() + base_id.encode()).hexdigest()[:12]
    tag = f"envkit-ansible/{name}:{digest}"
    if docker("image", "inspect", tag, check=False).returncode != 0:
        proc = docker(
            "build", "--quiet", "--build-arg", f"BASE_IMAGE={base_image}",
            "-t", tag, "-f", str(dockerfile), str(dockerfile.parent),
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.fail(f"building {tag} failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return tag


def wait_for(what: str, probe, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)


@dataclass
class Lab:
    """The running target and mirror, and the inventory that points at them."""

    target: str
    inventory: Path
    workdir: Path


@pytest.fixture(scope="session")
def ansible_lab(docker_client, base_image, tmp_path_factory) -> Iterator[Lab]:
    """Mirror + systemd target on a private network; removed at the end of the session."""
    if subprocess.run(["docker", "version"], capture_output=True, check=False).returncode != 0:
        skip_or_fail("the docker CLI cannot reach the engine (the docker connection plugin needs it)")
    work = tmp_path_factory.mktemp("ansible-lab")
    target_image = build_cached(HERE / "images" / "target.Dockerfile", "target", base_image)
    mirror_image = build_cached(HERE / "images" / "mirror.Dockerfile", "mirror", base_image)

    for name in (TARGET, MIRROR):
        docker("rm", "-f", name, check=False)
    docker("network", "rm", NETWORK, check=False)
    docker("network", "create", NETWORK)
    try:
        _start_mirror(mirror_image, work)
        docker(
            "run", "-d", "--name", TARGET, "--hostname", TARGET, "--network", NETWORK,
            *TARGET_RUN_ARGS, target_image,
        )  # fmt: skip

        def booted() -> bool:
            state = docker("exec", TARGET, "systemctl", "is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_for("systemd in the target", booted)
        _seed_legacy_nvidia_entries()
        tarball = _tiny_image_tarball(work)
        source = _snapshot_source(work)
        inventory = work / "inventory.yml"
        inventory.write_text(yaml.safe_dump(_inventory(tarball, source), sort_keys=False))
        yield Lab(target=TARGET, inventory=inventory, workdir=work)
    finally:
        if os.environ.get("ENVKIT_KEEP_ANSIBLE_LAB") != "1":
            for name in (TARGET, MIRROR):
                docker("rm", "-f", "--volumes", name, check=False)
            docker("network", "rm", NETWORK, check=False)


def _start_mirror(image: str, work: Path) -> None:
    """Build the signed repository in the mirror container, then serve it over HTTP."""
    versions = [OLD_TOOLKIT, matrix_ansible()["nvidia_container_toolkit_version"]]
    docker(
        "run", "-d", "--name", MIRROR, "--network", NETWORK, "--publish", "127.0.0.1::8080",
        "--volume", f"{HERE / 'mirror'}:/mirror-src:ro", image,
        "bash", "-c",
        f"/mirror-src/build-repo.sh /srv/mirror {' '.join(versions)} "
        "&& exec python3 -m http.server --directory /srv/mirror 8080",
    )  # fmt: skip
    port = docker("port", MIRROR, "8080/tcp").stdout.strip().splitlines()[0].rsplit(":", 1)[1]
    inrelease = f"http://127.0.0.1:{port}/libnvidia-container/stable/deb/amd64/InRelease"

    def serving() -> bool:
        try:
            with urllib.request.urlopen(inrelease, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_for(f"the mirror to serve {inrelease}", serving, timeout=60)


def _seed_legacy_nvidia_entries() -> None:
    """What nvidia-docker's old install guide left: a list without signed-by and
    the key trusted for every repository (apt-key style, trusted.gpg.d)."""
    script = (
        "set -e; apt_dir=/etc/apt; "
        f'python3 -c "import urllib.request,sys; sys.stdout.buffer.write(urllib.request.urlopen('
        f"'{MIRROR_URL}/libnvidia-container/gpgkey').read())\" > $apt_dir/trusted.gpg.d/nvidia-docker.asc; "
        f"echo 'deb {MIRROR_URL}/libnvidia-container/stable/deb/amd64 /' "
        "> $apt_dir/sources.list.d/nvidia-docker.list"
    )
    docker("exec", TARGET, "bash", "-c", script)


def _tiny_image_tarball(work: Path) -> Path:
    """A few-KB image saved with `docker save`: the air-gapped image path."""
    rootfs = work / "tiny-rootfs"
    rootfs.mkdir()
    (rootfs / "hello.txt").write_text("loaded by the envkit role from a tarball\n")
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
    subprocess.run(["docker", "import", "-", TINY_IMAGE], input=tar, capture_output=True, check=True)
    tarball = work / "tiny.tar"
    docker("save", "-o", str(tarball), TINY_IMAGE)
    return tarball


def _snapshot_source(work: Path) -> Path:
    """The envkit tree as it is now: the runs of one session build the same wheel
    even while someone edits the working tree (idempotence must not flake)."""
    snap = work / "envkit-src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("envkit", "training"):
        shutil.copytree(ROOT / name, snap / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, snap / name)
    return snap


def _inventory(tarball: Path, source: Path) -> dict:
    return {
        "all": {
            "hosts": {
                TARGET: {
                    "ansible_connection": "community.docker.docker",
                    "ansible_host": TARGET,
                    "ansible_python_interpreter": "/usr/bin/python3",
                    # root already, and the image has no sudo
                    "ansible_become": False,
                }
            },
            "vars": {
                # No GPU here: force the GPU path so the driver and the toolkit converge.
                "gpu_facts_override": True,
                # The container runs the host's kernel, for which Debian has no headers:
                # DKMS installs and skips the build, as on a host without headers.
                "nvidia_driver_kernel_headers_packages": [],
                # `auto` on purpose: the role must refuse to reboot a container itself.
                "nvidia_driver_reboot": "auto",
                "nvidia_container_toolkit_repo_url": f"{MIRROR_URL}/libnvidia-container/stable/deb/amd64",
                "nvidia_container_toolkit_repo_key_url": f"{MIRROR_URL}/libnvidia-container/gpgkey",
                "docker_engine_users": ["ops"],
                "docker_engine_daemon_options_extra": {"log-opts": {"max-file": "5"}},
                "envkit_images": [{"ref": TINY_IMAGE, "tarball": str(tarball)}],
                "envkit_source_dir": str(source),
            },
        }
    }


@dataclass
class Converged:
    """The runs of the session's one converge sequence on the shared target."""

    lab: Lab
    first: PlaybookRun
    toolkit_after_first: dict[str, str]
    upgrade: PlaybookRun
    idempotent: PlaybookRun
    check: PlaybookRun


def dpkg_versions(target: str, packages: tuple[str, ...]) -> dict[str, str]:
    out = docker(
        "exec", target, "dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\\n", *packages, check=False
    ).stdout
    return {line.split()[0]: line.split(" ", 1)[1] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="session")
def converged(ansible_lab: Lab) -> Converged:
    """site.yml converged at the old toolkit, upgraded to the matrix's, then run
    again (idempotence) and in --check --diff mode, all on the same target."""
    first = run_playbook(
        ansible_lab.inventory, "playbooks/site.yml", "-e", f"nvidia_container_toolkit_version={OLD_TOOLKIT}"
    )
    if first.rc != 0:
        pytest.fail(f"first converge failed (rc={first.rc}):\n{first.tail(80)}", pytrace=False)
    toolkit_after_first = dpkg_versions(ansible_lab.target, TOOLKIT_PACKAGES)
    # The upgrade touches only the toolkit role; the full runs after it prove the rest.
    upgrade = run_playbook(ansible_lab.inventory, "playbooks/site.yml", "--tags", "nvidia_container_toolkit")
    idempotent = run_playbook(ansible_lab.inventory, "playbooks/site.yml")
    check = run_playbook(ansible_lab.inventory, "playbooks/site.yml", "--check", "--diff")
    for name, run in (("upgrade", upgrade), ("idempotent", idempotent), ("check", check)):
        (ansible_lab.workdir / f"{name}.log").write_text(run.output)
    return Converged(ansible_lab, first, toolkit_after_first, upgrade, idempotent, check)


@pytest.fixture(scope="session")
def target_host(converged: Converged):
    """A testinfra host on the converged target."""
    import testinfra

    return testinfra.get_host(f"docker://{converged.lab.target}")


def read_json(host, path: str) -> dict:
    return json.loads(host.file(path).content_string)
