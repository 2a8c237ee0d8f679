"""Framework probes: child processes that hang, crash or report broken builds."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from envkit.doctor.model import Check
from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.frameworks import (
    FRAMEWORKS,
    MARK,
    arch_support,
    probe_framework,
    run_probe_script,
)
from envkit.doctor.runner import run_doctor
from tests.fakes.fake_host import make_host_tree

TORCH, TF = FRAMEWORKS
SLEEP_S = 60


@pytest.fixture(autouse=True)
def _no_container_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)


def script(tmp_path: Path, body: str, name: str = "probe.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def payload_script(tmp_path: Path, payload: dict, stderr: str = "") -> Path:
    """A probe script that prints `payload` the way the real probe scripts do."""
    return script(
        tmp_path,
        f"""
        import sys
        sys.stderr.write({stderr!r})
        print({MARK!r} + {json.dumps(json.dumps(payload))})
        """,
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _dies(pid: int, grace_s: float = 10.0) -> bool:
    """True once `pid` is gone or a zombie (dead, merely unreaped); SIGKILL lands asynchronously."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "\nState:\tZ" in state or "\nState:\tX" in state:
            return True
        time.sleep(0.05)
    return False


def test_hanging_probe_is_an_error_within_its_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    hang = script(
        tmp_path,
        f"""
        import subprocess, sys, time
        # Like a CUDA init that hangs in a helper process: the grandchild must die too.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({SLEEP_S})"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep({SLEEP_S})
        """,
    )
    opts = DoctorOptions(timeout_s=2.0, framework_scripts={"pytorch": hang}, fs_root=tmp_path)
    start = time.monotonic()
    result = probe_framework(TORCH, opts)
    waited = time.monotonic() - start
    (check,) = result.checks
    assert check.status == "error"
    assert "no answer within 2 s" in check.evidence
    assert "faulthandler" in check.hint
    assert waited < SLEEP_S / 2  # killed at its timeout, not waited for
    assert _dies(int(pidfile.read_text()))


def test_hanging_framework_makes_the_whole_run_not_usable(tmp_path: Path) -> None:
    hang = script(tmp_path, f"import time; time.sleep({SLEEP_S})")
    opts = DoctorOptions(
        timeout_s=1.0,
        framework_scripts={"tensorflow": hang},
        only=frozenset({"tensorflow"}),
        fs_root=tmp_path,
    )
    report = run_doctor(opts)
    assert [c.status for c in report.checks] == ["error"]
    assert report.exit_code == 1
    assert "tensorflow/import" in report.verdict()


def test_crashing_probe_is_an_error_with_its_last_words(tmp_path: Path) -> None:
    crash = script(
        tmp_path,
        """
        import os, sys
        sys.stderr.write("ImportError: libcudnn.so.9: cannot open shared object file\\n")
        sys.stderr.flush()
        os.abort()
        """,
    )
    opts = DoctorOptions(framework_scripts={"pytorch": crash}, fs_root=tmp_path)
    (check,) = probe_framework(TORCH, opts).checks
    assert check.status == "error"
    assert "killed by signal 6" in check.evidence
    assert "libcudnn.so.9" in check.evidence


def test_a_crash_after_tensorflow_start_up_notices_quotes_the_error_not_the_notices(tmp_path: Path) -> None:
    # What a TensorFlow child writes before it dies: absl's banner and oneDNN's INFO line
    # (as TF 2.21 prints them), a warning about a GPU library, then the real error.
    crash = script(
        tmp_path,
        """
        import sys
        sys.stderr.write(
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n"
            "I0000 00:00:1733300000.123456   4242 port.cc:153] oneDNN custom operations are on.\\n"
            "W0000 00:00:1733300000.223456   4242 gpu_device.cc:2344] Cannot dlopen some GPU libraries.\\n"
            "ImportError: libcudnn.so.9: cannot open shared object file\\n"
        )
        sys.exit(1)
        """,
    )
    opts = DoctorOptions(framework_scripts={"tensorflow": crash}, fs_root=tmp_path)
    (check,) = probe_framework(TF, opts).checks
    assert check.status == "error"
    assert "libcudnn.so.9" in check.evidence and "Cannot dlopen" in check.evidence
    assert "oneDNN" not in check.evidence and "absl::InitializeLog" not in check.evidence


def test_run_probe_script_reads_the_marked_line_among_noise(tmp_path: Path) -> None:
    noisy = script(tmp_path, f"print('banner'); print({MARK!r} + '{{\"x\": 1}}'); print('bye')")
    outcome = run_probe_script(sys.executable, noisy, 30)
    assert outcome.state == "ok" and outcome.payload == {"x": 1}


def test_module_missing_in_child_is_not_present(tmp_path: Path) -> None:
    probe = payload_script(tmp_path, {"import_error": "ModuleNotFoundError: No module named 'torch'"})
    (check,) = probe_framework(
        TORCH, DoctorOptions(framework_scripts={"pytorch": probe}, fs_root=tmp_path)
    ).checks
    assert check.status == "not_present"
    assert "envkit[torch]" in check.hint


def test_broken_install_fails(tmp_path: Path) -> None:
    probe = payload_script(
        tmp_path, {"import_error": "OSError: libtorch_cuda.so: undefined symbol: ncclCommSplit"}
    )
    (check,) = probe_framework(
        TORCH, DoctorOptions(framework_scripts={"pytorch": probe}, fs_root=tmp_path)
    ).checks
    assert check.status == "fail"
    assert "undefined symbol" in check.evidence


def torch_cuda_payload(capability: str, arch_list: list[str] | None = None, matmul_ok: bool = True) -> dict:
    """What torch_probe.py prints for a CUDA 13.0 build that sees one GPU."""
    return {
        "framework": "pytorch",
        "version": "2.13.0+cu130",
        "cuda": "13.0",
        "hip": None,
        "arch_list": arch_list or ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
        "cpu_capability": "AVX512",
        "threads": 32,
        "cudnn": "9.12.0",
        "nccl": "2.27.7",
        "cuda_available": True,
        "devices": [
            {"device": "cpu", "name": "AVX512"},
            {
                "device": "cuda:0",
                "name": "NVIDIA H100 80GB HBM3",
                "capability": capability,
                "memory_bytes": 85520809984,
            },
        ],
        "matmul": [
            {"device": "cpu", "max_rel_err": 3e-7, "ok": True},
            {"device": "cuda:0", "max_rel_err": 2e-7 if matmul_ok else 0.7, "ok": matmul_ok},
        ],
    }


def run_torch(tmp_path: Path, payload: dict, **opts) -> dict[str, Check]:
    root = make_host_tree(tmp_path / "root", gpus=1, driver="580.82.07")
    probe = payload_script(tmp_path, payload)
    options = DoctorOptions(framework_scripts={"pytorch": probe}, fs_root=root, **opts)
    return by_name(probe_framework(TORCH, options).checks)


def test_cuda_build_on_a_supported_gpu(tmp_path: Path) -> None:
    checks = run_torch(tmp_path, torch_cuda_payload("9.0"))
    assert checks["build"].status == "ok"
    assert "CUDA 13.0 build" in checks["build"].evidence and "NCCL 2.27.7" in checks["build"].evidence
    assert checks["gpu devices"].status == "ok"
    assert "NVIDIA H100 80GB HBM3 (cc 9.0)" in checks["gpu devices"].evidence
    assert checks["matmul"].status == "ok"


def test_gpu_missing_from_the_arch_list_fails(tmp_path: Path) -> None:
    checks = run_torch(tmp_path, torch_cuda_payload("12.0", ["sm_75", "sm_80", "sm_90"]))
    assert checks["gpu devices"].status == "fail"
    assert "sm_120 is not in this build's arch list" in checks["gpu devices"].evidence


def test_gpu_reached_only_through_ptx_warns(tmp_path: Path) -> None:
    checks = run_torch(tmp_path, torch_cuda_payload("12.0", ["sm_80", "sm_90", "sm_100", "compute_100"]))
    assert checks["gpu devices"].status == "warn"
    assert "PTX JIT" in checks["gpu devices"].evidence


def test_wrong_gpu_matmul_fails(tmp_path: Path) -> None:
    checks = run_torch(tmp_path, torch_cuda_payload("9.0", matmul_ok=False))
    assert checks["matmul"].status == "fail"
    assert "cuda:0" in checks["matmul"].evidence
    assert "Xid" in checks["matmul"].hint


def test_cuda_build_that_sees_no_gpu_on_a_gpu_host_fails(tmp_path: Path) -> None:
    payload = torch_cuda_payload("9.0")
    payload["devices"] = payload["devices"][:1]
    payload["matmul"] = payload["matmul"][:1]
    payload["cuda_available"] = False
    checks = run_torch(tmp_path, payload)
    assert checks["gpu devices"].status == "fail"
    assert "sees no GPU" in checks["gpu devices"].evidence


CPU_TORCH = {
    "framework": "pytorch",
    "version": "2.13.0+cpu",
    "cuda": None,
    "hip": None,
    "arch_list": [],
    "cpu_capability": "AVX2",
    "threads": 2,
    "cudnn": None,
    "nccl": None,
    "cuda_available": False,
    "devices": [{"device": "cpu", "name": "AVX2"}],
    "matmul": [{"device": "cpu", "max_rel_err": 3.2e-07, "ok": True}],
}


def test_cpu_build_on_a_gpu_host_warns_and_fails_when_a_gpu_is_required(tmp_path: Path) -> None:
    checks = run_torch(tmp_path, CPU_TORCH)
    assert checks["build"].status == "warn"
    from envkit.matrix import load_matrix

    # the fix names the CUDA wheel index of the matrix's pytorch/cuda row (the one source)
    cuda_index = load_matrix().image("pytorch", "cuda").wheel_index
    assert checks["build"].hint.startswith("pip install torch==")
    assert checks["build"].hint.endswith(f"--index-url {cuda_index}")

    checks = run_torch(tmp_path / "required", CPU_TORCH, require_gpu=True)
    assert checks["build"].status == "fail"


def test_cpu_build_on_a_cpu_machine_is_fine(tmp_path: Path) -> None:
    probe = payload_script(tmp_path, CPU_TORCH)
    root = make_host_tree(tmp_path / "root", gpus=0)
    opts = DoctorOptions(framework_scripts={"pytorch": probe}, fs_root=root)
    checks = by_name(probe_framework(TORCH, opts).checks)
    assert checks["build"].status == "ok" and "CPU build" in checks["build"].evidence
    assert checks["gpu devices"].status == "not_applicable"


def test_tensorflow_library_loading_errors_are_reported(tmp_path: Path) -> None:
    payload = {
        "framework": "tensorflow",
        "version": "2.21.0",
        "build_info": {"is_cuda_build": True, "cuda_version": "12.5.1", "cudnn_version": "9"},
        "is_cuda_build": True,
        "cuda": "12.5.1",
        "cudnn": "9",
        "cuda_compute_capabilities": ["sm_60", "sm_70", "sm_80", "sm_89", "compute_90"],
        "devices": [{"device": "/physical_device:CPU:0", "type": "CPU"}],
        "matmul": [{"device": "/device:CPU:0", "max_rel_err": 5.9e-07, "ok": True}],
    }
    stderr = (
        "W0000 00:00:1700000000.000000 1 gpu_device.cc:2344] Cannot dlopen some GPU libraries. "
        "Please make sure the missing libraries mentioned above are installed properly.\n"
    )
    probe = payload_script(tmp_path, payload, stderr)
    root = make_host_tree(tmp_path / "root", gpus=1, driver="580.82.07")
    opts = DoctorOptions(framework_scripts={"tensorflow": probe}, fs_root=root)
    checks = by_name(probe_framework(TF, opts).checks)
    assert checks["gpu libraries"].status == "fail"
    assert "Cannot dlopen some GPU libraries" in checks["gpu libraries"].evidence
    assert "tensorflow[and-cuda]" in checks["gpu libraries"].hint
    assert checks["gpu devices"].status == "fail"


def test_arch_support_follows_cuda_binary_compatibility() -> None:
    assert arch_support("9.0", ["sm_80", "sm_90"]) == "native"
    assert arch_support("9.0", ["sm_80", "sm_90a"]) == "native"
    assert arch_support("8.6", ["sm_75", "sm_80"]) == "native"  # same major, older minor
    assert arch_support("8.0", ["sm_86"]) == "none"
    assert arch_support("10.0", ["sm_80", "sm_90", "compute_90"]) == "ptx"  # PTX JITs forward
    assert arch_support("8.0", ["sm_90", "compute_90"]) == "none"  # but never backward
    assert arch_support("12.0", ["sm_80", "sm_90"]) == "none"


def test_tensorflow_build_without_the_gpu_architecture_fails(tmp_path: Path) -> None:
    payload = {
        "framework": "tensorflow",
        "version": "2.21.0",
        "build_info": {"is_cuda_build": True, "cuda_version": "12.5.1", "cudnn_version": "9"},
        "is_cuda_build": True,
        "cuda": "12.5.1",
        "cudnn": "9",
        "cuda_compute_capabilities": ["sm_60", "sm_70", "sm_80", "sm_89"],
        "devices": [
            {"device": "/physical_device:CPU:0", "type": "CPU"},
            {"device": "/physical_device:GPU:0", "type": "GPU", "name": "NVIDIA B200", "capability": "10.0"},
        ],
        "matmul": [{"device": "/device:CPU:0", "max_rel_err": 5.9e-07, "ok": True}],
    }
    probe = payload_script(tmp_path, payload)
    root = make_host_tree(tmp_path / "root", gpus=1, driver="580.82.07")
    opts = DoctorOptions(framework_scripts={"tensorflow": probe}, fs_root=root)
    checks = by_name(probe_framework(TF, opts).checks)
    assert checks["gpu devices"].status == "fail"
    assert "sm_100 is not among the build's compute capabilities" in checks["gpu devices"].evidence
    assert checks["gpu libraries"].status == "ok"


def test_cuda_init_failure_is_quoted_when_no_gpu_is_seen(tmp_path: Path) -> None:
    payload = torch_cuda_payload("9.0")
    payload["devices"] = payload["devices"][:1]
    payload["matmul"] = payload["matmul"][:1]
    stderr = (
        "/usr/lib/python3/site-packages/torch/cuda/__init__.py:182: UserWarning: CUDA initialization: "
        "The NVIDIA driver on your system is too old (found version 12020). (Triggered internally at "
        "/pytorch/c10/cuda/CUDAFunctions.cpp:119.)\n"
    )
    root = make_host_tree(tmp_path / "root", gpus=1, driver="535.183.01")
    probe = payload_script(tmp_path, payload, stderr)
    checks = by_name(
        probe_framework(TORCH, DoctorOptions(framework_scripts={"pytorch": probe}, fs_root=root)).checks
    )
    assert checks["gpu devices"].status == "fail"
    assert "driver on your system is too old" in checks["gpu devices"].evidence
