"""Shared test policy: markers, GPU skips, and 'skip locally, fail in CI'."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip with `reason` on a laptop; under CI a missing prerequisite is a failure."""
    if IN_CI:
        pytest.fail(f"CI requires this test to run: {reason}", pytrace=False)
    pytest.skip(reason)


def has_gpu() -> bool:
    """True when an NVIDIA GPU is visible to this process."""
    if not Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return Path("/dev/nvidia0").exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = has_gpu()
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU on this machine (CI has none)"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real SST-2, WikiText-2, Shakespeare); skips where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (it exists for developers and CI, not in a user's clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client for the real engine; skip (laptop) or fail (CI) without one."""
    try:
        import docker
    except ImportError:
        skip_or_fail("docker-py is not installed")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # docker.errors.DockerException, connection errors
        skip_or_fail(f"no Docker engine answers ({exc}); run scripts/docker-engine.sh")
    return client


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The local debootstrap base image (scripts/docker-engine.sh builds it)."""
    tag = os.environ.get("ENVKIT_BASE_IMAGE", "envkit/debian:bookworm")
    import docker

    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        skip_or_fail(f"base image {tag} is missing; run scripts/docker-engine.sh")
    return tag
