"""Session fixtures: each image is built ONCE per session, from the local base, or given.

`--image REF` (repeatable; or ENVKIT_TEST_IMAGES="REF REF") tests images built
elsewhere or pulled from a registry, as docker-stacks' tests do: the row of
each is found from its io.envkit labels, and nothing is built for that row.
Without it, the builds go through the same code as `envkit images build`
(plan_build + run_build with the BuildKit client found for this engine) and
reuse the engine's layer cache, so a warm session costs seconds. The pip_cert
secret is the host's CA bundle plus a unique marker line, so the layer scan
can prove that the secret's content reached no layer.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envkit.images.build import BuildPlan, find_builder, plan_build, run_build, source_root
from envkit.images.checks import engine_kind
from envkit.images.wheelhouse import ensure_wheelhouse
from envkit.matrix import ImageRow, load_matrix
from tests.conftest import skip_or_fail
from tests.containers.tracked_container import TrackedContainer

CPU_IMAGES = ("pytorch", "tensorflow")
CUDA_ROWS = tuple(r.key for r in load_matrix().images if r.cuda is not None)
HOST_CA = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--image",
        action="append",
        default=[],
        help="test this image reference (tag or id) instead of building its matrix row; repeatable",
    )


@dataclass(frozen=True)
class BuiltImage:
    row: ImageRow
    tag: str
    plan: BuildPlan | None  # None: a given image (--image), not built by this session


@pytest.fixture(scope="session")
def given_images(request, docker_client) -> dict[str, str]:
    """row key -> the image reference given with --image / ENVKIT_TEST_IMAGES."""
    from envkit.images.checks import row_for_image

    refs = [
        *request.config.getoption("--image", default=[]),
        *os.environ.get("ENVKIT_TEST_IMAGES", "").split(),
    ]
    given: dict[str, str] = {}
    for ref in refs:
        image = docker_client.images.get(ref)  # a missing image is an error of the run, not a skip
        given[row_for_image(load_matrix(), image.labels or {}).key] = ref
    return given


@pytest.fixture(scope="session")
def secret_marker() -> str:
    return f"envkit-test-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def pip_cert_secret(tmp_path_factory: pytest.TempPathFactory, secret_marker: str) -> Path:
    """The host CA bundle with a marker comment: still a valid bundle for pip, and traceable."""
    path = tmp_path_factory.mktemp("secrets") / "pip_cert.pem"
    bundle = HOST_CA.read_text(encoding="utf-8") if HOST_CA.is_file() else ""
    path.write_text(f"# {secret_marker}\n{bundle}", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def wheelhouse(base_image: str) -> Path:
    """./wheelhouse with every wheel the CPU rows need (downloaded once, then cached)."""
    rows = [load_matrix().image(name, "cpu") for name in CPU_IMAGES]
    dest = source_root() / "wheelhouse"
    try:
        ensure_wheelhouse(rows, source_root() / "pyproject.toml", dest)
    except RuntimeError as exc:
        skip_or_fail(f"cannot fill the wheelhouse: {exc}")
    return dest


@pytest.fixture(scope="session")
def image_builder(docker_client):
    return find_builder(engine_kind(docker_client))


def build_row(
    row: ImageRow,
    *,
    builder,
    wheelhouse: Path | None,
    pip_cert: Path,
    log_dir: Path,
    context: Path | None = None,
    tag: str | None = None,
    target: str = "runtime",
) -> BuiltImage:
    plan = plan_build(
        row,
        context=context,
        base_image=None,
        tag=tag,
        target=target,
        wheelhouse=(context / "wheelhouse") if context and wheelhouse else wheelhouse,
        pip_cert=pip_cert,
    )
    run_build(plan, builder, log_dir / f"{row.key}-{target}.log")
    return BuiltImage(row, plan.tag, plan)


@pytest.fixture(scope="session")
def build_logs() -> Path:
    path = source_root() / "build" / "images" / "tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def build_image(base_image, image_builder, pip_cert_secret, build_logs, given_images, request):
    """build(name, variant) -> BuiltImage: each row built once per session (or the given image)."""
    built: dict[str, BuiltImage] = {}

    def build(name: str, variant: str = "cpu") -> BuiltImage:
        row = load_matrix().image(name, variant)
        if row.key in given_images:
            return BuiltImage(row, given_images[row.key], None)
        if given_images:
            pytest.skip(f"--image given, none for {row.key}")
        if row.key not in built:
            if row.base_image != base_image:
                pytest.fail(
                    f"matrix row {row.key} builds FROM {row.base_image}, but the local base is {base_image}"
                )
            house = request.getfixturevalue("wheelhouse")
            if row.cuda is not None:
                try:
                    ensure_wheelhouse([row], source_root() / "pyproject.toml", house)
                except RuntimeError as exc:
                    skip_or_fail(f"cannot fill the wheelhouse of {row.key}: {exc}")
            built[row.key] = build_row(
                row,
                builder=image_builder,
                wheelhouse=house,
                pip_cert=pip_cert_secret,
                log_dir=build_logs,
            )
        return built[row.key]

    return build


@pytest.fixture(scope="session")
def build_cpu_image(build_image):
    """build(name) -> BuiltImage of the cpu row: built once, however many fixtures ask."""
    return lambda name: build_image(name, "cpu")


@pytest.fixture(scope="session", params=CPU_IMAGES)
def cpu_image(request, build_cpu_image) -> BuiltImage:
    """pytorch-cpu and tensorflow-cpu, each built once for the whole session."""
    return build_cpu_image(request.param)


@pytest.fixture(scope="session")
def pytorch_image(build_cpu_image) -> BuiltImage:
    return build_cpu_image("pytorch")


@pytest.fixture
def container(docker_client, cpu_image: BuiltImage) -> Iterator[TrackedContainer]:
    tracked = TrackedContainer(docker_client, cpu_image.tag, {"shm_size": "1g"})
    yield tracked
    tracked.remove()


@pytest.fixture(scope="session", params=CUDA_ROWS)
def cuda_image(request, build_image) -> BuiltImage:
    """Every CUDA row (pytorch-cuda, pytorch-cuda-devel, tensorflow-cuda), built once or given."""
    name, variant = request.param.split("-", 1)
    return build_image(name, variant)


@pytest.fixture
def cuda_container(docker_client, cuda_image: BuiltImage) -> Iterator[TrackedContainer]:
    tracked = TrackedContainer(docker_client, cuda_image.tag, {"shm_size": "1g"})
    yield tracked
    tracked.remove()
