"""GPU-only code paths that can still be pinned on a CPU: fp8 gating, the TF cache flush.

What truly needs a GPU (the flush landing in device memory, CUDA-event timing, fp8 on
sm_89+) is asserted by tests/integration/test_bench_gpu.py on a lent GPU.
"""

from __future__ import annotations

import types

import pytest
import torch

from envkit.bench.kernels import GPU_FLUSH_BYTES
from envkit.bench.shapes import Shape
from envkit.bench.torch_kernel import TorchKernel, fp8_api_problem, scaled_mm_schema_problem

# aten::_scaled_mm as PyTorch 2.1-2.3 declared it (native_functions.yaml): keyword-only
# scales and a (out, amax) tuple back. envkit's positional-scale call raises TypeError there.
TORCH_21_SCHEMA = (
    "aten::_scaled_mm(Tensor self, Tensor mat2, *, Tensor? bias=None, ScalarType? out_dtype=None, "
    "Tensor? scale_a=None, Tensor? scale_b=None, Tensor? scale_result=None, bool use_fast_accum=False) "
    "-> (Tensor, Tensor)"
)


def test_the_installed_torch_has_the_positional_scale_fp8_api():
    # read from the real torch here (2.13): its schema takes scale_a/scale_b positionally
    assert fp8_api_problem() is None
    assert scaled_mm_schema_problem(str(torch.ops.aten._scaled_mm.default._schema), torch.__version__) is None


def test_torch_2_1_scaled_mm_is_refused_with_the_reason():
    reason = scaled_mm_schema_problem(TORCH_21_SCHEMA, "2.1.2")
    assert reason is not None
    assert "torch 2.1.2" in reason and "positional scale_a/scale_b" in reason
    assert "2.1+" not in reason  # the old message claimed 2.1 was enough


def test_a_torch_without_float8_or_scaled_mm_is_refused():
    no_fp8 = types.SimpleNamespace(__version__="2.0.1")
    assert "no float8_e4m3fn" in fp8_api_problem(no_fp8)
    no_op = types.SimpleNamespace(
        __version__="2.1.0", float8_e4m3fn=object(), ops=types.SimpleNamespace(aten=types.SimpleNamespace())
    )
    assert "no torch._scaled_mm" in fp8_api_problem(no_op)


def test_fp8_on_a_cpu_is_unsupported_not_a_crash():
    from envkit.bench.kernels import KernelUnsupported

    with pytest.raises(KernelUnsupported, match="tensor cores"):
        TorchKernel(Shape(32, 32, 32), "fp8", "cpu")


def test_tensorflow_gpu_flush_fills_a_float_buffer_of_the_flush_size():
    tf = pytest.importorskip("tensorflow")
    from envkit.bench.tf_kernel import TensorflowKernel

    kernel = TensorflowKernel(Shape(32, 32, 32), "fp32", "cpu")
    assert kernel.timing == "host"
    # drive the GPU branch of prepare_call on the CPU device: the buffer TF is asked to
    # write must be float32 (int32 lives in host memory even on a GPU) and 256 MiB
    kernel._gpu, kernel._flush_elems, kernel._flush_value, kernel._l2 = True, GPU_FLUSH_BYTES // 4, 0.0, None
    kernel.prepare_call()
    assert kernel._l2.dtype == tf.float32
    assert kernel._l2.shape.num_elements() * 4 == GPU_FLUSH_BYTES
    first = float(kernel._l2[0])
    kernel.prepare_call()
    assert float(kernel._l2[0]) != first  # a new value each call: never a redundant write
    assert kernel.flush_device and kernel.flush_device.endswith("CPU:0")
    kernel.close()


def test_tensorflow_kernel_works_when_op_determinism_is_on():
    # the training engine turns TF op determinism on; a bench in the same process must still run
    pytest.importorskip("tensorflow")
    import subprocess
    import sys

    code = (
        "import tensorflow as tf; tf.config.experimental.enable_op_determinism();"
        "from envkit.bench.tf_kernel import TensorflowKernel; from envkit.bench.shapes import Shape;"
        "k = TensorflowKernel(Shape(16, 16, 16), 'fp32', 'cpu'); print(k.a.shape.num_elements())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "256"
