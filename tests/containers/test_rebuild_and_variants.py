"""Layer caching on a code-only change, the `test` build target, the CLI, and the CUDA rows."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import docker
import pytest

from envkit.images.build import snapshot_context, source_root
from envkit.matrix import load_matrix
from tests.containers.conftest import BuiltImage, build_row
from tests.containers.tracked_container import TrackedContainer

pytestmark = pytest.mark.container


def step_was_cached(log: str, needle: str) -> bool:
    """True when the BuildKit step whose title contains `needle` reports CACHED in a plain log."""
    ids = {line.split(" ", 1)[0] for line in log.splitlines() if line.startswith("#") and needle in line}
    assert ids, f"no build step mentions {needle!r}"
    return any(f"{ident} CACHED" in log for ident in ids)


@pytest.mark.slow
def test_code_only_change_rebuilds_only_the_last_layer(
    docker_client, cpu_image: BuiltImage, wheelhouse, image_builder, pip_cert_secret, build_logs, tmp_path
):
    context = snapshot_context(tmp_path / "context", wheelhouse)
    with (context / "envkit" / "__init__.py").open("a", encoding="utf-8") as fh:
        fh.write(f"# a code-only change {uuid.uuid4().hex}\n")
    tag = f"envkit-images-test/rebuild:{cpu_image.row.key}"
    try:
        build_row(
            cpu_image.row,
            builder=image_builder,
            wheelhouse=wheelhouse,
            pip_cert=pip_cert_secret,
            log_dir=tmp_path,
            context=context,
            tag=tag,
        )
        before = docker_client.images.get(cpu_image.tag).attrs["RootFS"]["Layers"]
        after = docker_client.images.get(tag).attrs["RootFS"]["Layers"]
        assert len(after) == len(before)
        assert after[:-1] == before[:-1], "a code-only change must reuse every layer below envkit's"
        assert after[-1] != before[-1], "envkit's own layer must change with its code"
        log = (tmp_path / f"{cpu_image.row.key}-runtime.log").read_text(encoding="utf-8")
        assert step_was_cached(log, "requirements.py"), "the dependency layer must come from the cache"
        assert not step_was_cached(log, "pip install --no-deps"), "envkit's own layer must be rebuilt"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, noprune=False)


@pytest.mark.slow
def test_test_target_runs_doctor_and_a_tiny_bench_inside_the_build(
    cpu_image: BuiltImage, wheelhouse, image_builder, pip_cert_secret, build_logs, docker_client
):
    built = build_row(
        cpu_image.row,
        builder=image_builder,
        wheelhouse=wheelhouse,
        pip_cert=pip_cert_secret,
        log_dir=build_logs,
        target="test",
    )
    log = (build_logs / f"{cpu_image.row.key}-test.log").read_text(encoding="utf-8")
    assert "envkit doctor" in log and "envkit bench matmul" in log
    docker_client.images.remove(built.tag)


def test_envkit_images_test_cli_passes_on_the_built_image(cpu_image: BuiltImage):
    envkit = Path(os.environ.get("VIRTUAL_ENV", source_root() / ".venv")) / "bin" / "envkit"
    proc = subprocess.run(
        [str(envkit), "images", "test", cpu_image.row.name, "--no-build", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and failed == [], failed
    assert {c["name"] for c in report["checks"]} >= {
        "PID 1 is tini",
        "pip check",
        "labels equal the matrix row",
    }


def test_envkit_images_build_rejects_an_unknown_variant():
    envkit = Path(os.environ.get("VIRTUAL_ENV", source_root() / ".venv")) / "bin" / "envkit"
    proc = subprocess.run(
        [str(envkit), "images", "build", "pytorch", "--variant", "rocm"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "--variant" in proc.stderr and "Traceback" not in proc.stderr


# -- CUDA rows: built only where their base image exists ------------------------

CUDA_ROWS = [r for r in load_matrix().images if r.cuda is not None]


@pytest.mark.slow
@pytest.mark.parametrize("row", CUDA_ROWS, ids=[r.key for r in CUDA_ROWS])
def test_cuda_variant_builds_on_its_cuda_base(
    row, docker_client, image_builder, pip_cert_secret, build_logs, wheelhouse
):
    try:
        docker_client.images.get(row.base_image)
    except docker.errors.ImageNotFound:
        # Not a CI failure: CI machines have no registry and no CUDA base image.
        pytest.skip(f"CUDA base image {row.base_image} is not present on this machine (no registry here)")
    # Online: a GPU build host reaches the row's wheel index (the wheelhouse holds CPU wheels).
    built = build_row(
        row, builder=image_builder, wheelhouse=None, pip_cert=pip_cert_secret, log_dir=build_logs
    )
    image = docker_client.images.get(built.tag)
    assert {k: image.labels.get(k) for k in row.labels()} == row.labels()
    env = dict(e.split("=", 1) for e in image.attrs["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    tracked = TrackedContainer(docker_client, built.tag, {"shm_size": "1g"})
    try:
        tracked.run_and_wait(["test", "-d", "/usr/local/cuda"])
        if row.variant == "cuda-devel":
            tracked.run_and_wait(["sh", "-c", "nvcc --version && g++ --version"])
    finally:
        tracked.remove()
