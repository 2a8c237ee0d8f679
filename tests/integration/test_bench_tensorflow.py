"""A real TensorFlow matmul run on the CPU (its import alone takes ~15 s here)."""

from __future__ import annotations

import math

import pytest

from envkit.bench.matmul import CPU_PEAK_REASON, MatmulOptions, TimingPolicy, run_matmul
from envkit.bench.report import validate
from envkit.bench.shapes import Shape

pytest.importorskip("tensorflow")

FAST = TimingPolicy(warmup_s=0.0, first_warmup_s=0.0, min_time_s=0.0, min_iters=3, max_iters=3)


def test_tensorflow_backend_real_run():
    options = MatmulOptions(
        backends=["tensorflow"],
        dtypes=["fp64", "fp32", "bf16"],
        device="cpu",
        shapes=[Shape(64, 48, 32), Shape(128, 128, 128)],
        policy=FAST,
    )
    doc = run_matmul(options)
    assert validate(doc) == []
    assert doc["summary"]["status"] == "ok"
    assert [r["dtype"] for r in doc["results"]] == ["fp64", "fp32", "bf16"]
    for run in doc["results"]:
        assert run["status"] == "ok" and run["peak_tflops"] is None and run["peak_reason"] == CPU_PEAK_REASON
        for s in run["shapes"]:
            assert s["correctness"]["passed"]
            assert all(math.isfinite(v) and v > 0 for v in s["tflops"].values())
    ctx = doc["context"]["frameworks"]["tensorflow"]
    assert ctx["tensorflow"] and ctx["threads"] >= 1
    # TF turns TF32 on by default; the bench must leave the switch as it found it
    import tensorflow as tf

    assert tf.config.experimental.tensor_float_32_execution_enabled() is True
