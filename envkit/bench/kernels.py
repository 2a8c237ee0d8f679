"""One timed matmul per backend: inputs, cache flush, output refresh, timing, a checkable sample.

Every kernel follows the same measurement contract (after mamf-finder):
fresh random-normal inputs per shape; before each timed call the cache is
flushed by writing a buffer larger than it (256 MiB on a GPU, twice the LLC
on a CPU) and the output is overwritten with NaN, so a kernel that skips its
write fails the correctness check; only the product itself is inside the timer.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from envkit.bench.context import last_level_cache_bytes
from envkit.bench.shapes import Shape

BACKENDS = ("numpy", "torch", "tensorflow")
DTYPE_ORDER = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8")

# What each backend can run at all, per device kind; device capability is checked later.
SUPPORTED = {
    "numpy": {"cpu": ("fp64", "fp32")},
    "torch": {"cpu": ("fp64", "fp32", "fp16", "bf16"), "gpu": DTYPE_ORDER},
    "tensorflow": {"cpu": ("fp64", "fp32", "fp16", "bf16"), "gpu": ("fp64", "fp32", "tf32", "fp16", "bf16")},
}

# Relative Frobenius error of a sampled block against a float64 product of the
# same (already rounded) inputs. fp16/bf16/fp8 inputs are exact in float64, so
# only accumulation and output rounding remain (bf16 output: ~2e-3). tf32 is
# judged against the fp32 inputs, so its 10-bit input rounding counts: ~3e-4 to
# ~1e-3 depending on whether the tensor cores round or truncate; 5e-3 keeps a
# margin while still catching any real fault (a wrong kernel is off by O(1)).
ERROR_BOUNDS = {"fp64": 1e-12, "fp32": 1e-5, "tf32": 5e-3, "fp16": 1e-2, "bf16": 1e-2, "fp8": 1e-2}

GPU_FLUSH_BYTES = 256 * 1024**2  # the largest L2/LLC of current accelerators (mamf-finder)
CPU_FLUSH_MIN_BYTES = 64 * 1024**2

# Layouts: on a GPU B is stored (n, k) and used transposed, as nn.Linear does and as
# mamf-finder measures; on a CPU both operands are row-major, as plain numpy code is.
GPU_LAYOUT = "nt"
CPU_LAYOUT = "nn"


class KernelUnsupported(RuntimeError):
    """This device cannot run this dtype (e.g. fp8 below compute capability 8.9)."""


class ShapeUnsupported(KernelUnsupported):
    """This dtype cannot run this one shape (e.g. fp8 needs dimensions divisible by 16)."""


@dataclass(frozen=True)
class ProductSample:
    """A block of the product and the operands that produced it, all float64."""

    a_rows: np.ndarray  # (s, k)
    b_cols: np.ndarray  # (k, t)
    c_block: np.ndarray  # (s, t)


def relative_error(sample: ProductSample) -> float:
    """||C_block - A_rows·B_cols|| / ||A_rows·B_cols|| with the reference in float64.

    The reference comes from einsum's own loop, not BLAS, so a numpy run is not
    checked against the very library it measures.
    """
    reference = np.einsum("ik,kj->ij", sample.a_rows, sample.b_cols, optimize=False)
    if not np.all(np.isfinite(sample.c_block)):
        return float("inf")
    denom = float(np.linalg.norm(reference))
    return float(np.linalg.norm(sample.c_block - reference)) / (denom if denom > 0 else 1.0)


def sample_indices(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` distinct sorted indices, always including the last row/column (edge tiles)."""
    if size <= count:
        return np.arange(size)
    picks = rng.choice(size - 1, size=count - 1, replace=False)
    return np.sort(np.append(picks, size - 1))


class HostCacheFlusher:
    """Writes a buffer larger than the CPU's last-level cache, evicting operands from it."""

    def __init__(self, nbytes: int | None = None) -> None:
        llc = last_level_cache_bytes() or 32 * 1024**2
        self.nbytes = nbytes or max(2 * llc, CPU_FLUSH_MIN_BYTES)
        self._buffer = np.zeros(self.nbytes // 8, dtype=np.float64)
        self._value = 0.0

    def flush(self) -> None:
        self._value += 1.0  # a new value each time, so no write is ever redundant
        self._buffer.fill(self._value)


_HOST_FLUSHER: HostCacheFlusher | None = None


def host_flusher() -> HostCacheFlusher:
    """One process-wide flush buffer (allocating 64+ MiB per shape would itself disturb the cache)."""
    global _HOST_FLUSHER
    if _HOST_FLUSHER is None:
        _HOST_FLUSHER = HostCacheFlusher()
    return _HOST_FLUSHER


class MatmulKernel(ABC):
    """A prepared product of one shape and dtype on one device."""

    backend: str = ""
    layout: str = CPU_LAYOUT
    # "host": perf_counter around a synchronised call (includes dispatch);
    # "cuda_events": device events around the product only. Never compare the two.
    timing: str = "host"

    def __init__(self, shape: Shape, dtype: str, device: str) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = device

    @abstractmethod
    def run(self) -> None:
        """Compute the product once into the output."""

    @abstractmethod
    def prepare_call(self) -> None:
        """Flush the cache and overwrite the output: the untimed step before each call."""

    def sync(self) -> None:  # noqa: B027  (a no-op default, not an abstract step)
        """Wait for queued device work (no-op where calls are synchronous)."""

    def time_calls(self, count: int) -> list[float]:
        """Seconds of each of `count` calls, each after `prepare_call()`."""
        times = []
        for _ in range(count):
            self.prepare_call()
            self.sync()
            start = time.perf_counter()
            self.run()
            self.sync()
            times.append(time.perf_counter() - start)
        return times

    @abstractmethod
    def sample(self, rows: np.ndarray, cols: np.ndarray) -> ProductSample:
        """Rows of A, columns of B and the matching block of the last product, in float64."""

    def close(self) -> None:  # noqa: B027  (a no-op default, not an abstract step)
        """Release buffers and restore any global precision switch."""


class NumpyKernel(MatmulKernel):
    """numpy.matmul on the CPU's BLAS (OpenBLAS in numpy's wheels)."""

    backend = "numpy"

    def __init__(self, shape: Shape, dtype: str, device: str = "cpu") -> None:
        super().__init__(shape, dtype, device)
        np_dtype = {"fp64": np.float64, "fp32": np.float32}[dtype]
        rng = np.random.default_rng()
        self.a = rng.standard_normal((shape.m, shape.k), dtype=np_dtype)
        self.b = rng.standard_normal((shape.k, shape.n), dtype=np_dtype)
        self.c = np.empty((shape.m, shape.n), dtype=np_dtype)
        self._flusher = host_flusher()

    def run(self) -> None:
        np.matmul(self.a, self.b, out=self.c)

    def prepare_call(self) -> None:
        self._flusher.flush()
        self.c.fill(np.nan)

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> ProductSample:
        return ProductSample(
            a_rows=self.a[rows].astype(np.float64),
            b_cols=self.b[:, cols].astype(np.float64),
            c_block=self.c[np.ix_(rows, cols)].astype(np.float64),
        )

    def close(self) -> None:
        del self.a, self.b, self.c
