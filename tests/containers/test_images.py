"""The CPU PyTorch and TensorFlow images, built from the local base and tested from outside.

In the spirit of jupyter/docker-stacks: every test talks to the real engine
and the real image through docker-py; the images are built once per session
(tests/containers/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from envkit.images.build import SOURCE_LABEL
from envkit.matrix import version_tuple
from tests.containers.conftest import CPU_IMAGES, BuiltImage
from tests.containers.tracked_container import TrackedContainer

pytestmark = pytest.mark.container

FRAMEWORK_MODULE = {"pytorch": "torch", "tensorflow": "tensorflow"}
SHM_WARNING = "WARNING: /dev/shm is"


def test_python_and_framework_versions_equal_the_matrix_row(container, cpu_image: BuiltImage):
    row = cpu_image.row
    code = (
        "import json, platform, importlib; "
        f"fw = importlib.import_module('{FRAMEWORK_MODULE[row.framework]}'); "
        "print(json.dumps([platform.python_version(), fw.__version__]))"
    )
    python, framework = json.loads(container.run_and_wait(["python", "-c", code]).stdout.splitlines()[-1])
    assert python.startswith(row.python + ".")
    # torch reports 2.13.0+cpu: the local build tag is not part of the matrix version
    assert version_tuple(framework.split("+")[0])[:3] == version_tuple(row.version)[:3], framework


def test_pip_check_finds_no_broken_requirement(container):
    result = container.run_and_wait(["pip", "check"])
    assert "No broken requirements" in result.stdout


def test_runs_as_uid_1000_with_a_writable_workspace(container):
    result = container.run_and_wait(
        ["sh", "-c", "id -u; id -un; pwd; touch /workspace/probe && echo writable"]
    )
    assert result.stdout.split() == ["1000", "envkit", "/workspace", "writable"]


def test_pid_1_is_tini(container):
    result = container.run_and_wait(["cat", "/proc/1/cmdline"])
    argv = result.stdout.split("\0")
    assert Path(argv[0]).name == "tini", argv


def test_labels_equal_the_matrix_row(docker_client, cpu_image: BuiltImage):
    labels = docker_client.images.get(cpu_image.tag).labels
    assert {k: labels.get(k) for k in cpu_image.row.labels()} == cpu_image.row.labels()
    assert labels["io.envkit.cuda-compat"] == "none"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])
    source = labels.get(SOURCE_LABEL)
    # the remote's https form, or no label at all: never a path of the build machine
    assert source is None or re.fullmatch(r"https://[^/@\s]+/\S+", source), source
    if cpu_image.plan is None:
        return  # a given image: its build arguments are not known here
    args = cpu_image.plan.build_args
    assert labels["org.opencontainers.image.revision"] == args["REVISION"] != ""
    assert labels["org.opencontainers.image.version"] == args["ENVKIT_VERSION"]
    assert source == cpu_image.plan.labels.get(SOURCE_LABEL)


def test_cpu_image_has_no_cuda_toolkit(container):
    result = container.run(
        ["sh", "-c", "ls -d /usr/local/cuda* 2>/dev/null; echo NVIDIA=$NVIDIA_VISIBLE_DEVICES"]
    )
    assert result.stdout.strip() == "NVIDIA="


def test_healthcheck_is_envkit_doctor(docker_client, cpu_image: BuiltImage):
    health = docker_client.images.get(cpu_image.tag).attrs["Config"]["Healthcheck"]
    assert health["Test"] == ["CMD", "envkit", "doctor"]


# -- nothing secret or stale in any layer --------------------------------------

FORBIDDEN = re.compile(
    r"(^|/)(\.cache/pip/.|\.bash_history$|\.python_history$|\.netrc$|\.pypirc$|pip\.conf$"
    r"|\.docker/config\.json$|\.git-credentials$|run/secrets/.|var/lib/apt/lists/.+_Packages)"
)


def scan_layers(docker_client, tag: str, marker: bytes) -> tuple[list[str], list[str], int]:
    """(forbidden paths, files holding `marker`, layers read) over every layer of `tag`."""
    forbidden: list[str] = []
    holding: list[str] = []
    layers = 0
    stream = docker_client.images.get(tag).save(named=False)
    reader = _ChunkReader(stream)
    with tarfile.open(fileobj=reader, mode="r|") as outer:
        for member in outer:
            if not member.name.endswith("layer.tar") and "blobs/sha256/" not in member.name:
                continue
            layer = outer.extractfile(member)
            if layer is None:
                continue
            layers += 1
            try:
                inner = tarfile.open(fileobj=layer, mode="r|")  # noqa: SIM115 closed below
            except tarfile.ReadError:  # OCI config/manifest blobs are not layers
                continue
            with inner:
                for entry in inner:
                    if FORBIDDEN.search(entry.name):
                        forbidden.append(entry.name)
                    if entry.isfile() and entry.size < 64 * 2**20:
                        data = inner.extractfile(entry)
                        if data is not None and marker in data.read():
                            holding.append(entry.name)
    return forbidden, holding, layers


class _ChunkReader:
    """A file-like view of docker-py's save() chunk iterator, for tarfile's stream mode."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


@pytest.mark.slow
def test_no_pip_cache_history_credentials_or_ca_secret_in_any_layer(
    docker_client, cpu_image: BuiltImage, secret_marker: str
):
    assert_clean_layers(docker_client, cpu_image, secret_marker)


def assert_clean_layers(docker_client, built: BuiltImage, secret_marker: str) -> None:
    """No pip cache, history, credentials or apt lists in any layer; the CA secret's marker nowhere."""
    if built.plan is not None:
        assert "pip_cert" in built.plan.secrets, "the build must have received the CA bundle as a secret"
    forbidden, holding, layers = scan_layers(docker_client, built.tag, secret_marker.encode())
    assert layers >= 4, "docker save returned no layers to scan"
    assert forbidden == []
    assert holding == [], f"the pip_cert secret's content is in {holding}"
    history = json.dumps(docker_client.images.get(built.tag).history())
    assert secret_marker not in history
    if built.plan is not None:
        assert str(built.plan.secrets["pip_cert"]) not in history


# -- shared memory ----------------------------------------------------------------


def test_entrypoint_warns_about_default_dev_shm_and_not_with_1g(container):
    small = container.run_and_wait(["true"], shm_size="64m")
    assert SHM_WARNING in small.stderr and "--shm-size 1g" in small.stderr
    large = container.run_and_wait(["true"], shm_size="1g")
    assert SHM_WARNING not in large.stderr


def test_entrypoint_execs_the_command_so_its_exit_code_reaches_docker(container):
    assert container.run(["sh", "-c", "exit 7"]).exit_code == 7


DATALOADER = """
import torch
from torch.utils.data import DataLoader, TensorDataset

data = TensorDataset(torch.arange(65536, dtype=torch.float64).reshape(256, 16, 16))
loader = DataLoader(data, batch_size=32, num_workers=2)
total = sum(batch.sum().item() for (batch,) in loader)
print(total == 65535 * 65536 / 2, total)
"""


def test_dataloader_with_two_workers_runs_under_1g_shm(docker_client, pytorch_image: BuiltImage):
    tracked = TrackedContainer(docker_client, pytorch_image.tag)
    try:
        result = tracked.run_and_wait(["python", "-c", DATALOADER], shm_size="1g")
    finally:
        tracked.remove()
    assert result.stdout.split()[0] == "True", result.stdout


# -- envkit inside the image ----------------------------------------------------


def test_envkit_doctor_json_reports_the_cpu_build(container, cpu_image: BuiltImage):
    result = container.run(["envkit", "doctor", "--json"], timeout=300)
    report = json.loads(result.stdout)
    assert result.exit_code == report["verdict"]["exit_code"] == 0, report["verdict"]
    facts = report["facts"]
    assert facts["gpu_count"] == 0
    assert facts["container"], "doctor should notice it runs in a container"
    fw = facts["frameworks"][cpu_image.row.framework]
    assert version_tuple(fw["version"].split("+")[0])[:3] == version_tuple(cpu_image.row.version)[:3]
    assert fw["gpu_build"] is False and fw["cuda"] is None


@pytest.mark.slow
def test_tiny_train_cycle_in_each_image_writes_its_report_to_the_bind_mounted_workspace(
    docker_client, build_cpu_image, tmp_path: Path
):
    # Both cycles run at once: the tiny preset uses one thread, and the machine has two cores.
    runs = {}
    for name in CPU_IMAGES:
        built = build_cpu_image(name)
        workspace = tmp_path / name
        workspace.mkdir()
        os.chown(workspace, 1000, 1000)  # the image's user writes here, as on a real host
        tracked = TrackedContainer(docker_client, built.tag)
        engine = built.row.framework
        started = tracked.start(
            ["envkit", "train", "cycle", "--preset", "tiny", f"engine={engine}", "run_dir=/workspace/run"],
            shm_size="1g",
            volumes={str(workspace): {"bind": "/workspace", "mode": "rw"}},
            healthcheck={"test": ["NONE"]},  # the cycle is measured here, not the periodic doctor
        )
        runs[name] = (tracked, started, workspace, engine)
    try:
        for name, (tracked, started, workspace, engine) in runs.items():
            result = tracked.wait(started, timeout=1200)
            assert result.exit_code == 0, f"{name}: exit {result.exit_code}\n{result.stderr[-3000:]}"
            report = json.loads((workspace / "run" / "report.json").read_text(encoding="utf-8"))
            assert report["cycle"]["status"] == "completed"
            assert {"prepare", "pretrain", "finetune", "test"} <= set(report)
            assert report["summary"]["engine"] == engine
            assert (workspace / "run").stat().st_uid == 1000
    finally:
        for tracked, *_ in runs.values():
            tracked.remove()


@pytest.mark.slow
def test_tiny_cycle_as_an_arbitrary_host_uid_into_a_directory_it_owns(
    docker_client, pytorch_image: BuiltImage, tmp_path: Path
):
    # `docker run --user "$(id -u):$(id -g)"` (issue 18): a uid/gid the image has never heard of
    uid, gid = 4321, 4322
    workspace = tmp_path / "runs"
    workspace.mkdir()
    os.chown(workspace, uid, gid)
    workspace.chmod(0o700)  # only that uid may write: the image's own uid 1000 could not
    tracked = TrackedContainer(docker_client, pytorch_image.tag)
    try:
        probe = tracked.run_and_wait(
            ["sh", "-c", 'id -u; echo "$HOME"; touch "$HOME/p" /workspace/p && echo writable'],
            user=f"{uid}:{gid}",
        )
        assert probe.stdout.split() == [str(uid), "/home/envkit", "writable"], probe.stdout
        result = tracked.run_and_wait(
            ["envkit", "train", "cycle", "--preset", "tiny", "engine=pytorch", "run_dir=/runs/tiny"],
            timeout=1200,
            user=f"{uid}:{gid}",
            shm_size="1g",
            volumes={str(workspace): {"bind": "/runs", "mode": "rw"}},
            healthcheck={"test": ["NONE"]},
        )
    finally:
        tracked.remove()
    report = json.loads((workspace / "tiny" / "report.json").read_text(encoding="utf-8"))
    assert report["cycle"]["status"] == "completed", result.stderr[-2000:]
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in (workspace / "tiny").rglob("*")}
    assert owners == {(uid, gid)}, owners
