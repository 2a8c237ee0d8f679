"""Layer caching on a code-only change, the `test` build target, and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import docker
import pytest

from envkit.images.build import SOURCE_LABEL, snapshot_context, source_root
from tests.containers.conftest import BuiltImage, build_row

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
    if cpu_image.plan is None:
        pytest.skip("a given image (--image): its layers were not built from this checkout")
    context = snapshot_context(tmp_path / "context", wheelhouse)
    with (context / "envkit" / "__init__.py").open("a", encoding="utf-8") as fh:
        fh.write(f"# a code-only change {uuid.uuid4().hex}\n")
    # A checkout with a remote (issue 18): its https form, credentials stripped, is the source label.
    for args in (
        ("init", "-q"),
        ("remote", "add", "origin", "https://bot:s3cret@example.org/acme/envkit.git"),
    ):
        subprocess.run(["git", "-C", str(context), *args], check=True, capture_output=True)
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
        labels = docker_client.images.get(tag).labels
        assert labels.get(SOURCE_LABEL) == "https://example.org/acme/envkit"
        assert not any("s3cret" in value for value in labels.values())
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
    if cpu_image.plan is None:
        pytest.skip("a given image (--image): the test target is built from this checkout")
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


# -- CLI contract: a user's mistake is one `error:` line and exit 2 --------------


def _envkit(*args: str) -> subprocess.CompletedProcess:
    envkit = Path(os.environ.get("VIRTUAL_ENV", source_root() / ".venv")) / "bin" / "envkit"
    return subprocess.run([str(envkit), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("images", "build", "pytorch", "--variant", "rocm"), "--variant"),
        (("images", "build", "caffe"), "no image"),
        (("images", "build", "pytorch", "--target", "debug"), "--target"),
        (("images", "build", "pytorch", "--online", "--wheelhouse", "."), "exclude each other"),
        (("images", "wheelhouse", "pytorch", "--variant", "gpu"), "--variant"),
        (("images", "test", "envkit-images-test/absent:never"), "not on this engine"),
        (("images", "test", "pytorch", "--variant", "cuda-devel", "--no-build", "--json"), None),
    ],
)
def test_user_mistakes_exit_2_with_one_error_line(args, needle, docker_client):
    proc = _envkit(*args)
    if needle is None:  # --no-build of a row that may or may not be built: never a traceback
        assert "Traceback" not in proc.stderr and proc.returncode in (0, 1, 2)
        return
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-500:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_images_test_refuses_an_image_that_is_no_envkit_image(docker_client, base_image):
    proc = _envkit("images", "test", base_image)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "labels name no matrix row" in proc.stderr


def test_compose_runs_every_envkit_service_as_the_host_user():
    import yaml

    compose = yaml.safe_load((source_root() / "compose.yaml").read_text(encoding="utf-8"))
    for name, service in compose["services"].items():
        assert service.get("user") == "${ENVKIT_UID:-1000}:${ENVKIT_GID:-1000}", name
