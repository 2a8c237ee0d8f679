"""Doctor's Docker probe against the real engine (docker-py), on a CPU host and a simulated GPU host."""

from __future__ import annotations

from pathlib import Path

import pytest

from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.containers import probe_docker
from tests.fakes.fake_host import make_host_tree


@pytest.fixture(autouse=True)
def _no_container_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)


def test_real_engine_without_nvidia_runtime(docker_client, tmp_path: Path) -> None:
    cpu = probe_docker(DoctorOptions(fs_root=make_host_tree(tmp_path / "cpu")))
    checks = {c.name: c for c in cpu.checks}
    assert checks["engine"].status == "ok"
    assert docker_client.version()["Version"] in checks["engine"].evidence
    runtimes = docker_client.info().get("Runtimes") or {}
    if "nvidia" in runtimes:
        pytest.skip("this engine has the NVIDIA runtime")
    assert checks["gpu runtime"].status == "not_applicable"

    # The same engine on a machine that has a GPU: containers could not reach it.
    gpu = probe_docker(DoctorOptions(fs_root=make_host_tree(tmp_path / "gpu", gpus=1, driver="580.82.07")))
    checks = {c.name: c for c in gpu.checks}
    assert checks["gpu runtime"].status == "fail"
    assert "nvidia-ctk runtime configure" in checks["gpu runtime"].hint
