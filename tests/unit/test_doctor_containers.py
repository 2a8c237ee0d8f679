"""Docker --deep preconditions and the DCGM probe, with a stand-in `dcgmi` binary on PATH."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest

from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.containers import gpu_container_smoke, probe_dcgm
from tests.fakes.fake_host import make_host_tree

DIAG_HEADER = """\
Successfully ran diagnostic for group.
+---------------------------+------------------------------------------------+
| Diagnostic                | Result                                         |
+===========================+================================================+
|-----  Metadata  ----------+------------------------------------------------|
| DCGM Version              | 3.3.9                                          |
| Driver Version Detected   | 580.82.07                                      |
| GPU Device IDs Detected   | 2330                                           |
|-----  Deployment  --------+------------------------------------------------|
| Denylist                  | Pass                                           |
| NVML Library              | Pass                                           |
| CUDA Main Library         | Pass                                           |
| Permissions and OS Blocks | Pass                                           |
"""
DIAG_PASS = DIAG_HEADER + "| Persistence Mode          | Pass                                           |\n"
DIAG_FAIL = (
    DIAG_HEADER + "| Persistence Mode          | Fail                                           |\n"
    "| Warning                   | GPU 0 Persistence mode for GPU 0 is disabled.  |\n"
)


@pytest.fixture(autouse=True)
def _no_container_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)


def install_dcgmi(bin_dir: Path, output: str, rc: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executable `dcgmi` that answers `diag -r 1` with `output` (no DCGM can run here)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    tool = bin_dir / "dcgmi"
    tool.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            [ "$1 $2 $3" = "diag -r 1" ] || exit 64
            cat <<'EOF'
            {textwrap.indent(output, "            ").strip()}
            EOF
            exit {rc}
            """
        )
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_dcgm_absent_on_a_cpu_machine_is_not_applicable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    (check,) = probe_dcgm(DoctorOptions(fs_root=make_host_tree(tmp_path / "r"))).checks
    assert check.status == "not_applicable"


def test_dcgm_absent_on_a_gpu_host_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    root = make_host_tree(tmp_path / "r", gpus=1, driver="580.82.07")
    (check,) = probe_dcgm(DoctorOptions(fs_root=root)).checks
    assert check.status == "not_present"
    assert "datacenter-gpu-manager" in check.hint


def test_dcgm_diag_runs_only_with_deep(tmp_path: Path, monkeypatch) -> None:
    install_dcgmi(tmp_path / "bin", DIAG_PASS, 0, monkeypatch)
    root = make_host_tree(tmp_path / "r", gpus=1, driver="580.82.07")
    (check,) = probe_dcgm(DoctorOptions(fs_root=root)).checks
    assert check.status == "ok" and "--deep" in check.hint
    (check,) = probe_dcgm(DoctorOptions(fs_root=root, deep=True)).checks
    assert check.name == "diag -r 1" and check.status == "ok"


def test_dcgm_diag_failure_names_the_failing_test(tmp_path: Path, monkeypatch) -> None:
    install_dcgmi(tmp_path / "bin", DIAG_FAIL, 226, monkeypatch)
    root = make_host_tree(tmp_path / "r", gpus=1, driver="580.82.07")
    (check,) = probe_dcgm(DoctorOptions(fs_root=root, deep=True)).checks
    assert check.status == "fail"
    assert "Persistence Mode: Fail" in check.evidence


def test_deep_container_test_needs_a_gpu_and_a_runtime() -> None:
    opts = DoctorOptions(deep=True)
    no_gpu = gpu_container_smoke(opts, {"gpu": {"gpu_count": 0}, "docker": {"engine": True}})
    assert no_gpu.status == "not_applicable"
    no_runtime = gpu_container_smoke(
        opts, {"gpu": {"gpu_count": 8}, "docker": {"engine": True, "nvidia_runtime": False, "cdi": False}}
    )
    assert no_runtime.status == "fail"
    assert "nvidia-ctk runtime configure" in no_runtime.hint
