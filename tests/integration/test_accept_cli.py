"""`envkit accept --device cpu` for real: the whole sequence, its JSON, injected faults, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from envkit.accept.report import schema_path

pytestmark = pytest.mark.slow

ENVKIT = [sys.executable, "-m", "envkit"]


def _schema() -> dict:
    return json.loads(schema_path().read_text())


def _run(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ENVKIT, "accept", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )


def test_quick_cpu_acceptance_passes_and_validates(tmp_path: Path) -> None:
    out = tmp_path / "verdict.json"
    proc = _run(["--device", "cpu", "--quick", "--json", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, _schema())
    assert json.loads(out.read_text()) == doc
    assert doc["verdict"]["result"] == "pass"
    assert doc["node"]["device"] == "cpu" and doc["node"]["hostname"]
    steps = {s["name"]: s for s in doc["steps"]}
    assert list(steps) == ["doctor", "soak", "memory", "peer", "allreduce", "dcgm", "train"]
    assert steps["doctor"]["status"] == "ok"
    assert steps["soak"]["status"] in ("ok", "warn")  # a shared CI machine may slow down mid-soak
    soak = steps["soak"]["details"]["devices"][0]
    assert soak["iterations"] > 0 and soak["wrong_products"] == 0
    assert len(soak["tflops_per_window"]) >= 5  # 60 s in windows of 6 s: throughput per window
    assert steps["memory"]["status"] == "ok"
    assert steps["allreduce"]["status"] == "ok"
    assert all(r["correct"] for r in steps["allreduce"]["details"]["results"])
    for name in ("peer", "dcgm", "train"):
        assert steps[name]["status"] == "not_applicable", steps[name]
    # each line of progress went to stderr, one per step
    assert sum(line.startswith("accept: ") for line in proc.stderr.splitlines()) == 7


def test_injected_wrong_product_and_slow_device_fail_with_reasons(tmp_path: Path) -> None:
    proc = _run(
        [
            "--device",
            "cpu",
            "--cpu-workers",
            "2",
            "--duration",
            "4s",
            "--tolerance",
            "30%",
            "--skip",
            "memory,allreduce",
            "--json",
        ],
        env={"ENVKIT_ACCEPT_FAULTS": "wrong=0;slow=1:3"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, _schema())
    assert doc["verdict"]["result"] == "fail"
    soak = next(s for s in doc["steps"] if s["name"] == "soak")
    assert soak["status"] == "fail"
    messages = " | ".join(f["message"] for f in soak["findings"] if f["status"] == "fail")
    assert "cpu0:" in messages and "products wrong" in messages
    assert "cpu1:" in messages and "slower than its siblings" in messages
    assert "NOT accepted" in doc["verdict"]["summary"]


def test_ctrl_c_during_the_soak_leaves_a_partial_verdict(tmp_path: Path) -> None:
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [*ENVKIT, "accept", "--device", "cpu", "--duration", "10m", "--out", str(out), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 300
    for line in proc.stderr:  # the doctor line is printed when the soak begins
        if line.startswith("accept: doctor") or time.monotonic() > deadline:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, _schema())
    assert doc["verdict"]["result"] == "incomplete" and doc["verdict"]["incomplete"] is True
    assert [s["name"] for s in doc["steps"]] == ["doctor"]
    assert json.loads(stdout) == doc


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--duration", "ten"], "--duration"),
        (["--tolerance", "150%"], "--tolerance"),
        (["--skip", "gemm"], "--skip"),
        (["--device", "tpu"], "--device"),
        (["--dcgm-level", "9"], "--dcgm-level"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    proc = _run(args, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
