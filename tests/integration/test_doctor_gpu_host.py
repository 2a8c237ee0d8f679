"""`envkit doctor` on a real NVIDIA host (skipped where there is no GPU; CI has none)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ENVKIT = Path(sys.executable).with_name("envkit")


def test_real_gpu_host_is_seen_end_to_end() -> None:
    cmd = [str(ENVKIT)] if ENVKIT.exists() else [sys.executable, "-m", "envkit"]
    proc = subprocess.run(
        [*cmd, "doctor", "--json", "--require-gpu", "--skip", "docker,dcgm"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    checks = {(c["area"], c["name"]): c for c in report["checks"]}
    assert checks[("gpu", "nvml")]["status"] == "ok"
    assert checks[("gpu", "required gpu")]["status"] == "ok"
    assert report["facts"]["gpu_count"] >= 1
    assert checks[("driver", "kernel module")]["status"] == "ok"
    assert report["facts"]["driver_version"] in checks[("driver", "kernel module")]["evidence"]
    for i in range(report["facts"]["gpu_count"]):
        assert checks[("gpu", f"gpu{i}")]["status"] == "ok"
    torch_build = checks.get(("pytorch", "build"))
    if torch_build and report["facts"]["frameworks"]["pytorch"]["gpu_build"]:
        assert checks[("pytorch", "gpu devices")]["status"] in ("ok", "warn")
        matmul = checks[("pytorch", "matmul")]
        assert matmul["status"] == "ok", matmul
        assert any(m["device"].startswith("cuda") for m in matmul["details"]["matmul"])
        assert checks[("compat", "pytorch driver")]["status"] in ("ok", "warn")
