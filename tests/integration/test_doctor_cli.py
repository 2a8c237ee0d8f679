"""The real `envkit doctor` on this machine, as a user runs it (a subprocess, no doubles)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest

from envkit.doctor.model import schema_path

ENVKIT = Path(sys.executable).with_name("envkit")


def envkit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(ENVKIT)] if ENVKIT.exists() else [sys.executable, "-m", "envkit"]
    env = {k: v for k, v in os.environ.items() if k != "NVIDIA_VISIBLE_DEVICES"}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def real_run() -> tuple[subprocess.CompletedProcess[str], dict]:
    """One full `envkit doctor --json` run shared by the assertions below (TF import is slow)."""
    proc = envkit("doctor", "--json")
    return proc, json.loads(proc.stdout)


def checks_of(report: dict) -> dict[tuple[str, str], dict]:
    return {(c["area"], c["name"]): c for c in report["checks"]}


def test_real_run_is_usable_and_schema_valid(real_run) -> None:
    proc, report = real_run
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(schema_path().read_text())
    jsonschema.Draft202012Validator(schema).validate(report)
    assert report["verdict"]["usable"] is True
    assert "Traceback" not in proc.stderr


def test_real_run_finds_no_nvml_here(real_run) -> None:
    _, report = real_run
    nvml = checks_of(report)[("gpu", "nvml")]
    if nvml["status"] == "ok":
        pytest.skip("this machine has an NVIDIA driver")
    assert nvml["status"] == "not_present"
    assert report["facts"]["gpu_count"] == 0


@pytest.mark.parametrize(("area", "dist"), [("pytorch", "torch"), ("tensorflow", "tensorflow-cpu")])
def test_real_run_sees_the_frameworks_as_cpu_builds(real_run, area: str, dist: str) -> None:
    _, report = real_run
    checks = checks_of(report)
    try:
        installed = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} (a CPU-only wheel) is not installed")
    if dist == "torch" and not installed.endswith("+cpu"):
        pytest.skip(f"torch {installed} is not a CPU wheel (GPU hosts: test_doctor_gpu_host.py)")
    build = checks[(area, "build")]
    assert build["status"] == "ok"
    assert "CPU build" in build["evidence"]
    assert installed.split("+")[0] in build["evidence"]
    assert checks[(area, "matmul")]["status"] == "ok"
    assert checks[(area, "gpu devices")]["status"] == "not_applicable"
    assert report["facts"]["frameworks"][area]["gpu_build"] is False


def test_real_run_reports_the_toolkit_truthfully(real_run) -> None:
    _, report = real_run
    nvcc = checks_of(report)[("cuda", "nvcc")]
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        assert nvcc["status"] == "not_present"
        return
    assert nvcc["status"] == "ok"
    release = nvcc["details"]["release"]
    toolkit = checks_of(report)[("compat", "toolkit driver")]
    if report["facts"]["driver_version"] is None:
        assert toolkit["status"] == "not_applicable"  # a compiler, but no driver to run its output
        assert f"nvcc {release} can compile here" in toolkit["evidence"]
    else:
        assert toolkit["details"]["cuda"] == release


def test_real_run_covers_every_area(real_run) -> None:
    _, report = real_run
    areas = {c["area"] for c in report["checks"]}
    assert areas == {
        "host",
        "driver",
        "gpu",
        "fabric",
        "xid",
        "cuda",
        "pytorch",
        "tensorflow",
        "compat",
        "docker",
        "dcgm",
    }


def test_table_output_is_grouped_with_a_verdict() -> None:
    proc = envkit("doctor", "--skip", "pytorch,tensorflow")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for area in ("host", "driver", "gpu", "cuda", "docker"):
        assert f" {area} " in out
    rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert "pytorch" not in rows and "tensorflow" not in rows  # --skip honoured
    assert out.strip().splitlines()[-1].startswith("usable")


def test_require_gpu_fails_without_a_gpu(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = envkit("doctor", "--require-gpu", "--only", "gpu", "--json", "--output", str(out))
    report = json.loads(out.read_text())
    if report["facts"]["gpu_count"]:
        pytest.skip("this machine has a GPU")
    assert proc.returncode == 1
    assert checks_of(report)[("gpu", "required gpu")]["status"] == "fail"
    assert json.loads(proc.stdout) == report


def test_unknown_area_is_a_usage_error() -> None:
    proc = envkit("doctor", "--only", "gpus")
    assert proc.returncode == 2
    message = " ".join(proc.stderr.replace("│", " ").split())
    assert "unknown area gpus; choose from host, driver, gpu" in message
    assert "Traceback" not in proc.stderr


def test_cli_start_up_does_not_import_frameworks() -> None:
    code = (
        "import sys, envkit.cli; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'pynvml', 'docker') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# TensorFlow's own start-up lines: absl's banner, oneDNN's notice (`I0000 ... port.cc`), CPU features
TF_NOISE = ("oneDNN custom operations", "I0000 ", "absl::InitializeLog", "cpu_feature_guard")


@pytest.mark.slow  # two TensorFlow probes
def test_tensorflow_start_up_noise_stays_off_the_terminal_unless_asked_for() -> None:
    pytest.importorskip("tensorflow")
    cmd = [str(ENVKIT)] if ENVKIT.exists() else [sys.executable, "-m", "envkit"]
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ENVKIT_TF_VERBOSE")}
    quiet = subprocess.run(
        [*cmd, "doctor", "--only", "tensorflow"], capture_output=True, text=True, timeout=300, env=base
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    both = quiet.stdout + quiet.stderr
    assert not [ln for ln in both.splitlines() if any(n in ln for n in TF_NOISE)], both[-2000:]
    # ENVKIT_TF_VERBOSE=1 relays the probe's own log, so the check above sees the lines when they are there
    loud = subprocess.run(
        [*cmd, "doctor", "--only", "tensorflow"],
        capture_output=True, text=True, timeout=300, env={**base, "ENVKIT_TF_VERBOSE": "1"},
    )  # fmt: skip
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert any(n in loud.stderr for n in TF_NOISE), loud.stderr[-2000:]
