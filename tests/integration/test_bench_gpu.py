"""What a healthy NVIDIA GPU must show in `envkit bench` (skipped without one; gpu_check.sh runs it).

Every dtype the GPU supports runs and is correct, each efficiency lies in (0, 1], NVML
telemetry was sampled and finds no fault, timing is by CUDA events, and a dtype the GPU
cannot run is reported as skipped with its reason, never as a crash or a number.
"""

from __future__ import annotations

import math

import pytest

from envkit.bench.matmul import MatmulOptions, TimingPolicy, run_matmul
from envkit.bench.memory import MemoryOptions, run_memory
from envkit.bench.report import validate
from envkit.bench.shapes import Shape
from envkit.matrix import load_matrix

pytestmark = pytest.mark.gpu
QUICK = TimingPolicy(warmup_s=0.05, first_warmup_s=0.2, min_time_s=0.05, min_iters=5, max_iters=50)
ALL_DTYPES = ["fp64", "fp32", "tf32", "fp16", "bf16", "fp8"]


def supported_dtypes(index: int = 0) -> tuple[list[str], dict[str, str]]:
    """(what this GPU and torch can run, {dtype: why not}) from compute capability and the fp8 API."""
    import torch

    from envkit.bench.torch_kernel import fp8_api_problem

    cc = torch.cuda.get_device_capability(index)
    why_not: dict[str, str] = {}
    if cc < (8, 0):
        why_not["tf32"] = why_not["bf16"] = "needs 8.0+"
    if cc < (8, 9):
        why_not["fp8"] = "needs 8.9+"
    elif fp8_api_problem(torch):
        why_not["fp8"] = "_scaled_mm"
    return [d for d in ALL_DTYPES if d not in why_not], why_not


def test_every_supported_dtype_is_correct_and_within_the_peak():
    doc = run_matmul(
        MatmulOptions(
            backends=["torch"],
            device="gpu",
            gpus=[0],
            dtypes=ALL_DTYPES,
            shapes=[Shape(4096, 4096, 4096), Shape(8192, 8192, 8192)],
            policy=QUICK,
        )
    )
    assert validate(doc) == []
    runs = {r["dtype"]: r for r in doc["results"]}
    supported, why_not = supported_dtypes()
    name = runs["fp32"]["device_name"]
    known_gpu = load_matrix().gpu(name) is not None
    for dtype in supported:
        run = runs[dtype]
        assert run["status"] == "ok", (dtype, run["message"], [s.get("message") for s in run["shapes"]])
        assert run["layout"] == "nt" and run["timing"] == "cuda_events"
        for s in run["shapes"]:
            assert s["correctness"]["passed"], (dtype, s["correctness"])
            t = s["tflops"]
            assert all(math.isfinite(v) and v > 0 for v in t.values())
            assert t["max"] >= t["median"] >= t["min"] and t["max"] >= t["mean"] >= t["min"]
        if known_gpu:
            # a figure above the dense peak means a broken timer or a wrong peak row
            assert 0 < run["efficiency"] <= 1.0, (dtype, run["efficiency"], run["peak_tflops"])
        else:
            assert run["peak_tflops"] is None and "add it to matrix.yaml" in run["peak_reason"]
        tele = run["telemetry"]
        assert tele["available"] is True and tele["samples"] >= 1, tele
        assert tele["max_sm_clock_mhz"] and tele["power_limit_w"]
        # a healthy GPU under load may be power-limited; a fault reason is a failure
        assert run["throttled"] is False, tele["throttled_because"]
        assert tele["clock_state"] in ("power-limited (expected under load)", "full clocks", "idle")
    for dtype, why in why_not.items():
        run = runs[dtype]
        assert run["status"] == "skipped" and why in run["message"], (dtype, run["message"])
        assert run["best"] is None and run["efficiency"] is None
    # the big bf16 product on a known tensor-core GPU reaches a sane share of its peak
    if known_gpu and "bf16" in supported:
        assert runs["bf16"]["efficiency"] >= 0.4, runs["bf16"]["efficiency"]
    assert doc["summary"]["failures"] == 0


def test_device_warmup_runs_before_the_first_shape():
    doc = run_matmul(
        MatmulOptions(
            backends=["torch"], device="gpu", gpus=[0], dtypes=["bf16"], shapes=[Shape(8192, 8192, 8192)],
            policy=QUICK, device_warmup_s=2.0,
        )
    )  # fmt: skip
    warm = doc["results"][0]["device_warmup"]
    assert warm["calls"] > 10 and warm["seconds"] >= 2.0


def test_cuda_memory_copies_are_correct_and_pinned_is_faster():
    doc = run_memory(MemoryOptions(device="gpu", size_mib=256, gpus=[0], min_time_s=0.05))
    assert validate(doc) == []
    tests = {r["test"]: r for r in doc["results"]}
    assert set(tests) == {"d2d", "h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"}
    assert all(r["correct"] for r in tests.values())
    # pinned transfers are not slower than pageable ones on any sane host
    assert tests["h2d_pinned"]["gbps"]["median"] >= 0.8 * tests["h2d_pageable"]["gbps"]["median"]


def test_tensorflow_flush_lands_in_device_memory():
    tf = pytest.importorskip("tensorflow")
    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("this TensorFlow build sees no GPU (a CPU wheel beside a CUDA torch)")
    from envkit.bench.tf_kernel import TensorflowKernel

    kernel = TensorflowKernel(Shape(1024, 1024, 1024), "fp32", "cuda:0")
    kernel.prepare_call()
    assert kernel.flush_device.endswith("GPU:0"), kernel.flush_device
    assert kernel._l2.dtype == tf.float32
    kernel.close()
