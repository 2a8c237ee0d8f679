"""The TensorFlow matmul kernel, on the CPU or on one GPU.

tensorflow is imported here, never at CLI start-up. TensorFlow enables TF32 for
float32 matmuls on Ampere+ by default, so fp32 turns it off and tf32 on, explicitly.

Two GPU facts shape this kernel:

- TensorFlow keeps int32 tensors in host memory even on a GPU device (its GPU kernels
  for int32 are registered with HostMemory), so an int32 `tf.fill` never touches the
  L2. The cache flush therefore fills a float32 buffer, which TensorFlow places and
  writes on the device; `flush_device` records where it really landed.
- TensorFlow has no public device-event timer, so a GPU call is timed on the host
  around `sync_devices()`: it includes eager dispatch and one synchronisation. Such
  figures carry `timing: "host"` and are lower than torch's CUDA-event figures for
  small shapes; never compare the two.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from envkit.bench.kernels import (
    CPU_LAYOUT,
    GPU_FLUSH_BYTES,
    GPU_LAYOUT,
    KernelUnsupported,
    MatmulKernel,
    ProductSample,
    host_flusher,
)
from envkit.bench.shapes import Shape

_CONFIGURED = False


def tensorflow():
    """Import TensorFlow quietly, letting GPU memory grow (so torch can share the device)."""
    global _CONFIGURED
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not _CONFIGURED:
        for gpu in tf.config.list_physical_devices("GPU"):
            # RuntimeError: already initialised by an earlier caller; keep its setting
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)
        _CONFIGURED = True
    return tf


def tf_gpu_count() -> int:
    return len(tensorflow().config.list_physical_devices("GPU"))


def tf_gpu_unsupported_reason(dtype: str, index: int) -> str | None:
    """Why TensorFlow GPU `index` cannot run `dtype`, or None if it can."""
    tf = tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[index])
    cc = details.get("compute_capability") or (0, 0)
    if dtype in ("tf32", "bf16") and tuple(cc) < (8, 0):
        name = details.get("device_name", f"GPU {index}")
        return f"{name} (compute capability {cc[0]}.{cc[1]}) has no {dtype} tensor cores (needs 8.0+)"
    return None


class TensorflowKernel(MatmulKernel):
    """tf.linalg.matmul in eager mode; TensorFlow allocates a fresh output per call."""

    backend = "tensorflow"
    timing = "host"

    def __init__(self, shape: Shape, dtype: str, device: str = "cpu") -> None:
        super().__init__(shape, dtype, device)
        tf = tensorflow()
        self._gpu = device.startswith("cuda")
        self.layout = GPU_LAYOUT if self._gpu else CPU_LAYOUT
        index = int(device.split(":")[1]) if self._gpu else 0
        self._tf_device = f"/GPU:{index}" if self._gpu else "/CPU:0"
        if self._gpu:
            reason = tf_gpu_unsupported_reason(dtype, index)
            if reason:
                raise KernelUnsupported(reason)
        elif dtype in ("tf32", "fp8"):
            raise KernelUnsupported(f"{dtype} needs an NVIDIA GPU (tensor cores); the CPU has none")
        if dtype == "fp8":
            raise KernelUnsupported("TensorFlow has no public fp8 matmul; use --backend torch for fp8")

        self._saved_tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(dtype == "tf32")

        tf_dtype = {
            "fp64": tf.float64,
            "fp32": tf.float32,
            "tf32": tf.float32,
            "fp16": tf.float16,
            "bf16": tf.bfloat16,
        }[dtype]
        m, n, k = shape.m, shape.n, shape.k
        with tf.device(self._tf_device):
            # drawn in float32 (or float64) and rounded, as random.normal has no bf16 kernel everywhere
            base = tf.float64 if dtype == "fp64" else tf.float32
            # Fresh inputs per shape, with explicit op seeds: a process that enabled TF's op
            # determinism (the training engine does) refuses unseeded random ops.
            seed_a, seed_b = (int(x) for x in np.random.default_rng().integers(0, 2**31 - 1, size=2))
            self.a = tf.cast(tf.random.normal((m, k), dtype=base, seed=seed_a), tf_dtype)
            b_shape = (n, k) if self.layout == GPU_LAYOUT else (k, n)
            self.b = tf.cast(tf.random.normal(b_shape, dtype=base, seed=seed_b), tf_dtype)
        self.c = None
        self.flush_device: str | None = None
        if self._gpu:
            self._flush_elems = GPU_FLUSH_BYTES // 4  # float32 elements
            self._flush_value = 0.0
            self._l2 = None
        else:
            self._flusher = host_flusher()

    def run(self) -> None:
        tf = tensorflow()
        with tf.device(self._tf_device):
            self.c = tf.linalg.matmul(self.a, self.b, transpose_b=self.layout == GPU_LAYOUT)

    def prepare_call(self) -> None:
        tf = tensorflow()
        # dropping the last output returns its buffer, so each call writes fresh memory
        self.c = None
        if self._gpu:
            with tf.device(self._tf_device):
                self._l2 = None
                # float32, not int32: TF's int32 Fill on a GPU writes host memory
                self._flush_value += 1.0
                self._l2 = tf.fill([self._flush_elems], tf.constant(self._flush_value, tf.float32))
            self.flush_device = self._l2.device
        else:
            self._flusher.flush()

    def sync(self) -> None:
        # eager CPU ops finish before returning; GPU ops are queued on a stream
        if self._gpu:
            tensorflow().test.experimental.sync_devices()

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> ProductSample:
        tf = tensorflow()
        if self.c is None:
            raise RuntimeError("no product to sample: run() was not called after prepare_call()")
        with tf.device(self._tf_device):
            a_rows = tf.gather(self.a, rows, axis=0)
            if self.layout == GPU_LAYOUT:
                b_cols = tf.transpose(tf.gather(self.b, cols, axis=0))
            else:
                b_cols = tf.gather(self.b, cols, axis=1)
            block = tf.gather(tf.gather(self.c, rows, axis=0), cols, axis=1)
        as64 = lambda t: np.asarray(t.numpy(), dtype=np.float64)  # noqa: E731
        return ProductSample(as64(a_rows), as64(b_cols), as64(block))

    def close(self) -> None:
        tensorflow().config.experimental.enable_tensor_float_32_execution(self._saved_tf32)
        self.a = self.b = self.c = self._l2 = None
