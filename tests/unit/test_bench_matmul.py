"""Real small matmul runs on the CPU, the correctness check, peaks and the multi-GPU summary."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest

from envkit.bench.errors import BenchInputError
from envkit.bench.kernels import ERROR_BOUNDS, NumpyKernel, ProductSample, relative_error, sample_indices
from envkit.bench.matmul import (
    CPU_PEAK_REASON,
    MatmulOptions,
    Target,
    TimingPolicy,
    _peak,
    finish_run,
    plan_runs,
    run_matmul,
    summarise_runs,
)
from envkit.bench.report import validate
from envkit.bench.shapes import Shape

# tiny and fast: the method is the same, only the repetition counts shrink
FAST = TimingPolicy(warmup_s=0.0, first_warmup_s=0.0, min_time_s=0.0, min_iters=3, max_iters=3)
SHAPES = [Shape(64, 48, 32), Shape(96, 96, 96)]


def _run(backends, dtypes, kernels=None):
    options = MatmulOptions(backends=backends, dtypes=dtypes, device="cpu", shapes=SHAPES, policy=FAST)
    return run_matmul(options, kernels=kernels)


def _assert_honest_cpu_run(doc, backend, dtypes):
    assert validate(doc) == []
    assert doc["summary"]["status"] == "ok"
    runs = [r for r in doc["results"] if r["backend"] == backend]
    assert [r["dtype"] for r in runs] == dtypes
    for run in runs:
        assert run["status"] == "ok" and run["device"] == "cpu"
        assert run["peak_tflops"] is None and run["peak_reason"] == CPU_PEAK_REASON
        assert run["efficiency"] is None
        for s in run["shapes"]:
            assert s["correctness"]["passed"] and s["correctness"]["rel_error"] <= ERROR_BOUNDS[run["dtype"]]
            assert s["iterations"] == 3 and s["warmup_calls"] >= 1
            assert all(math.isfinite(v) and v > 0 for v in s["tflops"].values())
            assert s["tflops"]["max"] >= s["tflops"]["median"] >= s["tflops"]["min"]
            assert s["flops"] == 2 * s["m"] * s["n"] * s["k"]
            # the headline is FLOPs over the median time, nothing else
            assert s["tflops"]["median"] == pytest.approx(s["flops"] / s["seconds"]["median"] / 1e12)
        best = max(run["shapes"], key=lambda s: s["tflops"]["median"])
        assert run["best"]["tflops"] == best["tflops"]["median"]
        medians = [s["tflops"]["median"] for s in run["shapes"]]
        assert run["geomean_tflops"] == pytest.approx(math.prod(medians) ** (1 / len(medians)))


def test_numpy_backend_real_run():
    doc = _run(["numpy"], ["fp64", "fp32"])
    _assert_honest_cpu_run(doc, "numpy", ["fp64", "fp32"])
    blas = doc["context"]["frameworks"]["numpy"]["blas"]
    assert blas["library"]  # the BLAS numpy was built against, named
    assert doc["context"]["host"]["cpu"]["usable_cpus"] >= 1


def test_torch_backend_real_run_every_cpu_dtype():
    doc = _run(["torch"], ["fp32", "fp64", "bf16", "fp16"])
    _assert_honest_cpu_run(doc, "torch", ["fp64", "fp32", "fp16", "bf16"])
    ctx = doc["context"]["frameworks"]["torch"]
    assert ctx["threads"] >= 1 and ctx["torch"]


class _OffByOneRow(NumpyKernel):
    """A BLAS that gets the last row wrong (an edge-tile bug)."""

    def run(self) -> None:
        super().run()
        self.c[-1, :] += 1.0


class _SkipsTheWrite(NumpyKernel):
    """A kernel that returns without writing its output."""

    def run(self) -> None:
        pass


@pytest.mark.parametrize("faulty", [_OffByOneRow, _SkipsTheWrite])
def test_a_wrong_product_is_a_failure_not_a_number(faulty):
    doc = _run(["numpy"], ["fp32"], kernels={"numpy": faulty})
    assert validate(doc) == []
    run = doc["results"][0]
    assert run["status"] == "fail" and doc["summary"]["status"] == "fail"
    assert doc["summary"]["failures"] == len(SHAPES)
    for s in run["shapes"]:
        assert s["status"] == "fail" and s["tflops"] is None
        assert not s["correctness"]["passed"]
        assert "float64 reference" in s["message"]
    assert run["best"] is None and run["geomean_tflops"] is None


def test_relative_error_and_sampling():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 5)), rng.standard_normal((5, 6))
    assert relative_error(ProductSample(a, b, a @ b)) < 1e-15
    assert relative_error(ProductSample(a, b, (a @ b) * 1.01)) == pytest.approx(0.01)
    assert relative_error(ProductSample(a, b, np.full((8, 6), np.nan))) == math.inf
    idx = sample_indices(1000, 16, rng)
    assert len(idx) == 16 and len(set(idx)) == 16 and idx[-1] == 999
    assert list(sample_indices(5, 16, rng)) == [0, 1, 2, 3, 4]


def test_bad_requests_are_input_errors():
    with pytest.raises(BenchInputError, match="numpy on cpu"):
        plan_runs(MatmulOptions(backends=["numpy"], dtypes=["bf16"]))
    with pytest.raises(BenchInputError, match="unknown dtype"):
        plan_runs(MatmulOptions(backends=["torch"], dtypes=["fp4"]))
    with pytest.raises(BenchInputError, match="unknown backend"):
        plan_runs(MatmulOptions(backends=["jax"]))
    with pytest.raises(BenchInputError, match="CPU only"):
        plan_runs(MatmulOptions(backends=["numpy"], device="gpu"))
    with pytest.raises(BenchInputError, match="tf32"):
        plan_runs(MatmulOptions(backends=["torch"], dtypes=["tf32"], device="cpu"))


def test_default_cpu_dtypes_are_fp64_and_fp32():
    plan = plan_runs(MatmulOptions(backends=["numpy"], device="cpu"))
    assert [d for _, d in plan] == ["fp64", "fp32"]


def test_gpu_peaks_come_from_the_matrix():
    h100 = Target("torch", "gpu", "cuda:0", 0, "NVIDIA H100 80GB HBM3")
    assert _peak(h100, "bf16") == (989.4, None)
    assert _peak(h100, "fp32") == (67.0, None)
    peak, reason = _peak(Target("torch", "gpu", "cuda:0", 0, "Tesla V100-SXM2-32GB"), "bf16")
    assert peak is None and "no dense bf16 peak" in reason
    peak, reason = _peak(Target("torch", "gpu", "cuda:0", 0, "Mystery GPU 9000"), "bf16")
    assert peak is None and reason == "unknown GPU 'Mystery GPU 9000': add it to matrix.yaml"
    # "NVIDIA L40" once matched the L4 row by substring (efficiency above 100%)
    assert _peak(Target("torch", "gpu", "cuda:0", 0, "NVIDIA L40"), "bf16") == (181.05, None)
    # a MIG slice as torch names it, with its own multiprocessor count
    mig = Target("torch", "gpu", "cuda:0", 0, "NVIDIA H100 80GB HBM3 MIG 3g.40gb", None, 60)
    assert _peak(mig, "bf16")[0] == pytest.approx(989.4 * 60 / 132)


def _gpu_run(device, name, median, peak=989.4):
    run = {
        "backend": "torch",
        "device": device,
        "device_kind": "gpu",
        "device_name": name,
        "dtype": "bf16",
        "status": "running",
        "message": None,
        "best": None,
        "geomean_tflops": None,
        "peak_tflops": peak,
        "peak_reason": None,
        "efficiency": None,
        "throttled": False,
        "shapes": [
            {
                "m": 8192,
                "n": 8192,
                "k": 8192,
                "status": "ok",
                "tflops": {"median": median, "max": median * 1.02, "mean": median, "min": median * 0.97},
            },
            {
                "m": 4096,
                "n": 4096,
                "k": 4096,
                "status": "ok",
                "tflops": {"median": median / 2, "max": median / 2, "mean": median / 2, "min": median / 2},
            },
        ],
    }
    return finish_run(run)


def test_efficiency_best_shape_and_the_slowest_gpu_is_named():
    runs = [_gpu_run(f"cuda:{i}", "NVIDIA H100 80GB HBM3", 700.0) for i in range(8)]
    runs[5] = _gpu_run("cuda:5", "NVIDIA H100 80GB HBM3", 560.0)
    assert runs[0]["best"]["shape"] == "8192x8192x8192"
    assert runs[0]["efficiency"] == pytest.approx(700.0 / 989.4)
    assert runs[0]["geomean_tflops"] == pytest.approx(math.sqrt(700.0 * 350.0))
    summary = summarise_runs(runs)
    row = summary["rows"][0]
    assert row["devices"] == 8 and row["best"]["tflops"] == 700.0
    assert row["slowest"]["device"] == "cuda:5"
    assert row["slowest"]["vs_fastest"] == pytest.approx(0.8)
    assert summary["status"] == "ok"


class _InterruptedOnSecondShape(NumpyKernel):
    """Stands for a user pressing Ctrl-C while the second shape runs."""

    def run(self) -> None:
        if self.shape == SHAPES[1]:
            raise KeyboardInterrupt
        super().run()


def test_ctrl_c_keeps_the_best_result_so_far():
    doc = _run(["numpy"], ["fp64", "fp32"], kernels={"numpy": _InterruptedOnSecondShape})
    assert doc["interrupted"] is True
    assert validate(doc) == []
    (run,) = doc["results"]  # fp32 never started
    assert run["status"] == "interrupted"
    assert [s["status"] for s in run["shapes"]] == ["ok"]
    assert run["best"]["shape"] == str(SHAPES[0])


def test_shape_statistics_are_mamf_finders_max_median_mean_of_per_call_rates():
    from envkit.bench.stats import call_rate_stats

    calls = [0.001, 0.002, 0.004]
    rates = call_rate_stats(8e9, calls)
    # mamf-finder: per-call TFLOP/s, then max / median / mean of those
    assert rates["max"] == pytest.approx(8e12)
    assert rates["median"] == pytest.approx(4e12)
    assert rates["mean"] == pytest.approx((8e12 + 4e12 + 2e12) / 3)
    assert rates["min"] == pytest.approx(2e12)
    doc = _run(["numpy"], ["fp32"])
    for s in doc["results"][0]["shapes"]:
        assert s["tflops"]["max"] >= s["tflops"]["mean"] >= s["tflops"]["min"]


class _CountingKernel(NumpyKernel):
    """A real numpy kernel that counts the calls made before the first timed shape."""

    calls: ClassVar[list[str]] = []

    def run(self) -> None:
        _CountingKernel.calls.append(str(self.shape))
        super().run()


def test_device_warmup_runs_once_per_device_before_the_first_shape():
    _CountingKernel.calls = []
    options = MatmulOptions(
        backends=["numpy"],
        dtypes=["fp64", "fp32"],
        device="cpu",
        shapes=SHAPES,
        policy=FAST,
        device_warmup_s=0.05,
    )
    doc = run_matmul(options, kernels={"numpy": _CountingKernel})
    assert validate(doc) == []
    first, second = doc["results"]
    warm = first["device_warmup"]
    assert warm["calls"] >= 1 and warm["seconds"] >= 0.05 and warm["shape"] == str(SHAPES[0])
    assert "device_warmup" not in second  # the device is already warm
    assert doc["options"]["device_warmup_s"] == 0.05
    # the warm-up calls come before any measured call
    assert _CountingKernel.calls[: warm["calls"]] == [str(SHAPES[0])] * warm["calls"]


class _OldTorchFp8(NumpyKernel):
    """Stands for torch 2.1-2.4's _scaled_mm: the positional-scale call raises TypeError."""

    def run(self) -> None:
        raise TypeError("_scaled_mm() takes 2 positional arguments but 4 were given")


def test_an_exception_in_one_dtype_is_an_error_row_not_the_end_of_the_sweep():
    doc = _run(["numpy"], ["fp64", "fp32"], kernels={"numpy": _OldTorchFp8})
    assert validate(doc) == []
    assert [r["status"] for r in doc["results"]] == ["error", "error"]
    assert all("TypeError" in s["message"] for r in doc["results"] for s in r["shapes"])


def test_timing_method_is_recorded_per_run():
    doc = _run(["numpy"], ["fp32"])
    assert doc["results"][0]["timing"] == "host"
    assert "timing_note" not in doc["results"][0]  # only GPU figures timed on the host get the warning
