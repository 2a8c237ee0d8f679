"""GPU paths (skipped without an NVIDIA GPU; benchmarks/gpu_check.sh runs the same on a lent one)."""

from __future__ import annotations

import math

import pytest

from envkit.bench.matmul import MatmulOptions, TimingPolicy, run_matmul
from envkit.bench.memory import MemoryOptions, run_memory
from envkit.bench.report import validate
from envkit.bench.shapes import Shape

pytestmark = pytest.mark.gpu
QUICK = TimingPolicy(warmup_s=0.05, first_warmup_s=0.2, min_time_s=0.05, min_iters=5, max_iters=50)


def test_torch_cuda_matmul_every_dtype_is_correct_with_peak_and_telemetry():
    doc = run_matmul(
        MatmulOptions(
            backends=["torch"], device="gpu", gpus=[0], shapes=[Shape(2048, 2048, 2048)], policy=QUICK
        )
    )
    assert validate(doc) == []
    assert doc["summary"]["failures"] == 0
    measured = [r for r in doc["results"] if r["status"] == "ok"]
    assert {"fp32", "bf16", "fp16"} <= {r["dtype"] for r in measured}
    for run in measured:
        assert run["layout"] == "nt"
        assert all(math.isfinite(s["tflops"]["median"]) for s in run["shapes"])
        if run["peak_tflops"] is not None:
            assert 0 < run["efficiency"] < 1.2
        assert run["telemetry"]["available"] in (True, False)


def test_cuda_memory_copies_are_correct():
    doc = run_memory(MemoryOptions(device="gpu", size_mib=256, gpus=[0], min_time_s=0.05))
    assert validate(doc) == []
    tests = {r["test"]: r for r in doc["results"]}
    assert set(tests) == {"d2d", "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"}
    assert all(r["correct"] for r in tests.values())
    # pinned transfers are not slower than pageable ones on any sane host
    assert tests["h2d_pinned"]["gbps"]["median"] >= 0.8 * tests["h2d_pageable"]["gbps"]["median"]
