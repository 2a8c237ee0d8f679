"""benchmarks/gpu_check.sh's control flow, through its real CPU dry run (GPU_CHECK_DEVICE=cpu).

The script is the project's one prepared GPU check; a run that says "ok" must mean every
step ran and passed. These tests run the script itself (bash, real steps) and read the
summary.json it writes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
GPU_TESTS = ("test_bench_gpu.py", "test_doctor_gpu_host.py", "test_train_gpu.py")


def run_check(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    full_env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu", **env}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return proc, summary


def plan(**env: str) -> dict:
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_PLAN": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("gpus", ["1", "8"])
def test_the_gpu_plan_fits_its_nine_minute_budget(gpus):
    p = plan(GPU_CHECK_DEVICE="gpu", GPU_CHECK_GPUS=gpus)
    assert p["budget_s"] <= 540
    assert p["planned_s"] == sum(s["limit_s"] for s in p["steps"]) <= p["budget_s"]
    names = [s["step"] for s in p["steps"]]
    # every path with no CPU equivalent has its step: pynvml, CUDA events, pinned copies, NCCL, AdamW
    for step in ("doctor", "train-mfu", "bench-matmul", "accept", "gpu-tests"):
        assert step in names
    # accept runs bench memory and the NCCL all-reduce over every GPU: no separate steps for them
    assert not any(n.startswith(("bench-memory", "bench-allreduce")) for n in names)


def test_the_gpu_tests_step_runs_every_gpu_marked_test():
    marked = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if re.search(r"^(pytestmark = pytest\.mark\.gpu|\s*@pytest\.mark\.gpu)\b", path.read_text(), re.M)
    )
    assert {f"tests/integration/{name}" for name in GPU_TESTS} <= set(marked)
    assert plan(GPU_CHECK_DEVICE="gpu", GPU_CHECK_GPUS="1")["gpu_test_files"] == marked
    assert "pytest -m gpu" in SCRIPT.read_text()


def test_limits_over_the_budget_refuse_to_start(tmp_path):
    proc, summary = run_check(tmp_path, BUDGET_S="100")
    assert proc.returncode == 2
    assert "over BUDGET_S=100s" in proc.stderr
    assert summary == {}


def test_a_failed_a_skipped_and_a_missed_step_each_fail_the_check(tmp_path):
    proc, summary = run_check(
        tmp_path,
        GPU_CHECK_ONLY="versions,train-mfu,bench-matmul,bench-memory",
        GPU_CHECK_FORCE_FAIL="bench-memory",
        GPU_CHECK_FORCE_SKIP="bench-matmul",
        GPU_CHECK_FORCE_MISS="versions",
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert summary["status"] == "fail"
    assert summary["failed"] == ["bench-memory"]
    assert summary["skipped"] == ["bench-matmul"]
    assert summary["missed_target"] == ["versions"]
    steps = {s["step"]: s for s in summary["steps"]}
    assert steps["train-mfu"]["status"] == "not_applicable"  # a GPU-only step does not fail a CPU run
    assert steps["bench-matmul"]["rc"] is None and "budget" in steps["bench-matmul"]["note"]
    assert steps["bench-memory"]["rc"] == 1
    # it ran and exited 0, yet missed what it is for
    assert steps["versions"]["rc"] == 0 and "target" in steps["versions"]["note"]


def test_a_clean_run_of_two_steps_exits_zero(tmp_path):
    proc, summary = run_check(tmp_path, GPU_CHECK_ONLY="versions,gpu-tests")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert summary["status"] == "ok"
    assert summary["failed"] == summary["skipped"] == summary["missed_target"] == []
    assert [s["status"] for s in summary["steps"]] == ["ok", "not_applicable"]


@pytest.mark.slow
def test_the_full_cpu_dry_run_passes(tmp_path):
    proc, summary = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert summary["status"] == "ok" and summary["device"] == "cpu"
    ran = [s["step"] for s in summary["steps"] if s["status"] == "ok"]
    assert ran == ["versions", "doctor", "bench-matmul", "bench-memory", "bench-allreduce-2cpu", "accept"]
    assert (tmp_path / "out" / "bench-matmul.json").exists()
    verdict = json.loads((tmp_path / "out" / "accept.json").read_text())["verdict"]
    assert verdict["result"] == "pass", verdict
