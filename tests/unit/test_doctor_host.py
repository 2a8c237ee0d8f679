"""Host probe: container/WSL detection, /dev/shm and memlock verdicts."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.host import container_runtime, is_wsl, judge_memlock, judge_shm, probe_host

MIB = 2**20


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KUBERNETES_SERVICE_HOST", "container", "WSL_DISTRO_NAME"):
        monkeypatch.delenv(var, raising=False)


def tree(root: Path, files: dict[str, str]) -> DoctorOptions:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return DoctorOptions(fs_root=root)


def test_docker_podman_kubernetes_and_bare_metal(tmp_path: Path, clean_env) -> None:
    assert container_runtime(tree(tmp_path / "d", {".dockerenv": ""})) == "docker"
    assert container_runtime(tree(tmp_path / "p", {"run/.containerenv": ""})) == "podman"
    k8s = {"proc/1/cgroup": "11:memory:/kubepods/burstable/pod1234/abcd\n"}
    assert container_runtime(tree(tmp_path / "k", k8s)) == "kubernetes"
    assert container_runtime(tree(tmp_path / "m", {"proc/1/cgroup": "0::/init.scope\n"})) is None


def test_wsl_is_detected_from_the_kernel_banner(tmp_path: Path, clean_env) -> None:
    wsl = "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@941d701f84f1) (gcc (GCC) 11.2.0)\n"
    assert is_wsl(tree(tmp_path / "w", {"proc/version": wsl}))
    assert not is_wsl(tree(tmp_path / "l", {"proc/version": "Linux version 6.1.0-26-amd64\n"}))


def test_small_shm_warns_with_the_container_fix() -> None:
    check = judge_shm(64 * MIB, "docker")
    assert check.status == "warn"
    assert "64 MiB" in check.evidence
    assert "Bus error" in check.hint and "--shm-size" in check.hint
    assert "remount" in judge_shm(512 * MIB, None).hint
    assert judge_shm(None, None).status == "warn"
    assert judge_shm(8 * 1024 * MIB, "docker").status == "ok"


def test_memlock_matters_on_gpu_hosts_only() -> None:
    limited = 8 * 1024 * 1024
    assert judge_memlock(limited, False, None).status == "ok"
    gpu = judge_memlock(limited, True, "docker")
    assert gpu.status == "warn" and "--ulimit memlock=-1" in gpu.hint
    assert judge_memlock(resource.RLIM_INFINITY, True, None).status == "ok"


def test_real_host_probe_reports_every_fact(clean_env) -> None:
    checks = {c.name: c for c in probe_host(DoctorOptions()).checks}
    assert set(checks) == {"os", "cpu", "memory", "disk", "shm", "memlock"}
    assert all(c.status in ("ok", "warn") for c in checks.values())
    assert "kernel" in checks["os"].evidence
    assert checks["memory"].details["total_bytes"] > 0
