"""Three systemd containers as a Slurm cluster: one controller, two compute nodes.

The nodes come from one image (built once, cached by content): systemd as PID
1, and /opt/envkit/venv holding torch CPU and tensorflow-cpu installed from a
wheelhouse the host fills once (`pip download`, a local file for torch), so no
node downloads gigabytes. Slurm, munge and envkit itself are what the playbook
(ansible/playbooks/cluster.yml) installs: the session converges it, runs it
again (idempotence) and in --check mode, then the tests submit jobs. The
containers share a Docker network the fixture creates (traffic only between
them) and a volume mounted at /shared on all three. Everything is removed at
the end (ENVKIT_KEEP_CLUSTER=1 keeps it for debugging).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, skip_or_fail

HERE = Path(__file__).resolve().parent
ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent
# Every container, network and volume name starts with this prefix (shared Docker engine).
PREFIX = os.environ.get("ENVKIT_CLUSTER_PREFIX", "hc")
NETWORK = f"{PREFIX}-net"
VOLUME = f"{PREFIX}-shared"
CONTROLLER = f"{PREFIX}-ctl"
COMPUTE = (f"{PREFIX}-c1", f"{PREFIX}-c2")
# Slurm's hostlist form of COMPUTE, as a job's SLURM_JOB_NODELIST prints it.
COMPUTE_HOSTLIST = f"{PREFIX}-c[1-2]"
NODES = (CONTROLLER, *COMPUTE)
VENV = "/opt/envkit/venv"
# What the nodes' venv holds before the playbook runs: the frameworks and the
# train extra. envkit's own base dependencies come with the envkit role too.
FRAMEWORKS = [
    "torch==2.13.0", "tensorflow-cpu==2.21.0", "pydantic>=2", "tokenizers>=0.19", "safetensors>=0.4",
    "tensorboard>=2.16", "matplotlib>=3.8", "typer>=0.12", "rich>=13", "pyyaml>=6", "jsonschema>=4",
    "numpy>=1.26", "nvidia-ml-py>=12", "docker>=7",
]  # fmt: skip
WHEELHOUSE = Path(os.environ.get("ENVKIT_CLUSTER_WHEELHOUSE", ROOT / "build" / "cluster" / "wheelhouse"))
# --privileged is refused on this host (no CAP_SYS_RESOURCE): every other
# capability, unconfined seccomp/apparmor, the cgroup tree for systemd.
RUN_ARGS = [
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--tmpfs=/run",
    "--tmpfs=/run/lock",
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
]


def docker(*args: str, check: bool = True, timeout: float = 600, input: str | None = None):
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])} ... failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc


def sh(node: str, script: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a bash script on a node (as root, login-like PATH with the envkit venv)."""
    return docker("exec", node, "bash", "-lc", script, check=check, timeout=timeout)


def wait_for(what: str, probe, timeout: float = 120.0, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)


def _image_id(ref: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def fill_wheelhouse() -> list[str]:
    """The frameworks' wheels for the nodes (Python 3.11, manylinux x86_64), downloaded once."""
    stamp = WHEELHOUSE / ".requirements"
    want = "\n".join(FRAMEWORKS)
    if not (stamp.is_file() and stamp.read_text() == want):
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [str(BIN / "pip"), "download", "--quiet", "--only-binary=:all:", "--dest", str(WHEELHOUSE),
             *FRAMEWORKS],
            capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            skip_or_fail(f"cannot fill the nodes' wheelhouse {WHEELHOUSE}: {proc.stderr.strip()[-500:]}")
        stamp.write_text(want)
    return sorted(p.name for p in WHEELHOUSE.glob("*.whl"))


def build_node_image(base_image: str) -> str:
    """systemd image from node.Dockerfile, plus the frameworks' venv (committed once)."""
    dockerfile = HERE / "images" / "node.Dockerfile"
    wheels = fill_wheelhouse()
    digest = hashlib.sha256(
        dockerfile.read_bytes() + _image_id(base_image).encode() + "\n".join(wheels + FRAMEWORKS).encode()
    ).hexdigest()[:12]
    tag = f"{PREFIX}-cluster/node:{digest}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    systemd_tag = f"{PREFIX}-cluster/node-systemd:{digest}"
    proc = subprocess.run(
        ["docker", "build", "--quiet", "--build-arg", f"BASE_IMAGE={base_image}", "-t", systemd_tag,
         "-f", str(dockerfile), str(dockerfile.parent)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"building {systemd_tag} failed:\n{proc.stderr[-3000:]}", pytrace=False)
    builder = f"{PREFIX}-image-build"
    docker("rm", "-f", builder, check=False)
    try:
        docker(
            "run", "--name", builder, "--volume", f"{WHEELHOUSE}:/wheelhouse:ro", systemd_tag,
            "bash", "-c",
            f"python3 -m venv {VENV} && {VENV}/bin/pip install --quiet --no-index --find-links /wheelhouse "
            + " ".join(f"'{r}'" for r in FRAMEWORKS),
            timeout=1800,
        )  # fmt: skip
        # The commit keeps the run's command unless told: systemd again.
        docker("commit", "--change", 'CMD ["/lib/systemd/systemd"]', builder, tag, timeout=1200)
    finally:
        docker("rm", "-f", builder, check=False)
        docker("rmi", systemd_tag, check=False)
    return tag


@dataclass
class PlaybookRun:
    """One ansible-playbook run: exit status, output, and the PLAY RECAP counts per host."""

    rc: int
    output: str

    def recap(self, host: str) -> dict[str, int]:
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        if not match:
            raise AssertionError(f"no PLAY RECAP line for {host}:\n{self.tail()}")
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}

    def changed_tasks(self) -> list[str]:
        tasks, current = [], ""
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                current = line
            elif line.startswith("changed:") and current not in tasks:
                tasks.append(current)
        return tasks

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def run_playbook(inventory: Path, *extra: str, timeout: int = 1500) -> PlaybookRun:
    args = [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/cluster.yml", *extra]
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
    return PlaybookRun(rc=proc.returncode, output=proc.stdout + proc.stderr)


def _snapshot_source(work: Path) -> Path:
    """The envkit tree as it is now: every run of the session builds the same wheel."""
    snap = work / "envkit-src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("envkit", "training"):
        shutil.copytree(ROOT / name, snap / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, snap / name)
    return snap


def _inventory(source: Path, work: Path) -> dict:
    host = {
        "ansible_connection": "community.docker.docker",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become": False,  # root already, and the image has no sudo
    }
    return {
        "all": {
            "children": {
                "slurm_controller": {"hosts": {CONTROLLER: {**host, "ansible_host": CONTROLLER}}},
                "slurm_compute": {"hosts": {n: {**host, "ansible_host": n} for n in COMPUTE}},
            },
            "vars": {
                "envkit_source_dir": str(source),
                "envkit_controller_wheelhouse": str(work / "envkit-wheelhouse"),
                # containers share the host's cgroup tree: no cgroup plugins (see the role's defaults)
                "slurm_cgroup": False,
                # the three containers report the host's memory: leave most of it unclaimed
                "slurm_mem_reserved_mb": 4096,
                # Three nodes share 2 cores: importing TensorFlow cold can take minutes while
                # the others do the same; the nodes have no Docker engine (not their business).
                "envkit_doctor_extra_args": ["--skip", "docker", "--timeout", "300"],
                # Slurm kills a health check after 60 s, and TensorFlow's import alone can take
                # that here while a job trains: the test's health check probes PyTorch only.
                "slurm_healthcheck_doctor_args": ["--skip", "docker", "--skip", "tensorflow"],
                "slurm_kill_wait": 30,
            },
        }
    }


@dataclass
class Cluster:
    inventory: Path
    workdir: Path
    first: PlaybookRun
    second: PlaybookRun
    check: PlaybookRun
    timings: dict[str, float] = field(default_factory=dict)

    def sh(self, node: str, script: str, check: bool = True, timeout: float = 600):
        return sh(node, script, check=check, timeout=timeout)


@pytest.fixture(scope="session")
def cluster(docker_client, base_image, tmp_path_factory) -> Iterator[Cluster]:
    """The converged cluster (first run, second run, --check run recorded)."""
    if subprocess.run(["docker", "version"], capture_output=True, check=False).returncode != 0:
        skip_or_fail("the docker CLI cannot reach the engine (the docker connection plugin needs it)")
    work = tmp_path_factory.mktemp("cluster")
    t0 = time.monotonic()
    image = build_node_image(base_image)
    timings = {"image_s": time.monotonic() - t0}
    _remove_all()
    docker("network", "create", NETWORK)
    docker("volume", "create", VOLUME)
    try:
        for node in NODES:
            docker(
                "run", "-d", "--name", node, "--hostname", node, "--network", NETWORK,
                "--volume", f"{VOLUME}:/shared", *RUN_ARGS, image,
            )  # fmt: skip
        for node in NODES:

            def booted(node: str = node) -> bool:
                state = docker("exec", node, "systemctl", "is-system-running", check=False).stdout.strip()
                return state in ("running", "degraded")

            wait_for(f"systemd on {node}", booted)
        source = _snapshot_source(work)
        inventory = work / "inventory.yml"
        inventory.write_text(yaml.safe_dump(_inventory(source, work), sort_keys=False))
        t1 = time.monotonic()
        first = run_playbook(inventory)
        (work / "first.log").write_text(first.output)
        timings["converge_s"] = time.monotonic() - t1
        if first.rc != 0:
            pytest.fail(f"converge failed (rc={first.rc}):\n{first.tail()}", pytrace=False)
        t2 = time.monotonic()
        second = run_playbook(inventory)
        timings["second_run_s"] = time.monotonic() - t2
        t3 = time.monotonic()
        check = run_playbook(inventory, "--check", "--diff")
        timings["check_run_s"] = time.monotonic() - t3
        for name, run in (("second", second), ("check", check)):
            (work / f"{name}.log").write_text(run.output)
        yield Cluster(inventory, work, first, second, check, timings)
    finally:
        if os.environ.get("ENVKIT_KEEP_CLUSTER") != "1":
            _remove_all()


def _remove_all() -> None:
    for node in NODES:
        docker("rm", "-f", "--volumes", node, check=False)
    docker("volume", "rm", "-f", VOLUME, check=False)
    docker("network", "rm", NETWORK, check=False)
