"""The PyTorch matmul kernel, on the CPU or on one CUDA device.

torch is imported here, never at CLI start-up.
"""

from __future__ import annotations

import numpy as np

from envkit.bench.kernels import (
    CPU_LAYOUT,
    GPU_FLUSH_BYTES,
    GPU_LAYOUT,
    KernelUnsupported,
    MatmulKernel,
    ProductSample,
    ShapeUnsupported,
    host_flusher,
)
from envkit.bench.shapes import Shape


def _torch():
    import torch

    return torch


def torch_dtype(dtype: str):
    torch = _torch()
    return {
        "fp64": torch.float64,
        "fp32": torch.float32,
        "tf32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "fp8": getattr(torch, "float8_e4m3fn", None),
    }[dtype]


# The call envkit makes: scales as the 3rd/4th positional arguments, one tensor back.
# That is torch._scaled_mm's form from PyTorch 2.5 on; 2.1-2.4 took scale_a/scale_b as
# keyword-only and returned (out, amax), so the same call raises TypeError there.
_SCALED_MM_POSITIONAL = ["self", "mat2", "scale_a", "scale_b"]


def scaled_mm_schema_problem(schema: str, version: str) -> str | None:
    """Why the aten::_scaled_mm `schema` (its text) cannot take envkit's fp8 call, or None."""
    try:
        params, returns = schema.split("(", 1)[1].rsplit(") ->", 1)
    except (IndexError, ValueError):
        return f"torch {version}: cannot read torch._scaled_mm's signature ({schema!r})"
    positional = []
    for param in params.split(","):
        param = param.strip()
        if param == "*":
            break
        positional.append(param.split()[-1].split("=")[0] if param else "")
    if positional[:4] != _SCALED_MM_POSITIONAL:
        return (
            f"torch {version}'s torch._scaled_mm takes no positional scale_a/scale_b "
            f"({', '.join(positional)}); fp8 here needs the positional-scale form of torch 2.4/2.5+"
        )
    if returns.strip().startswith("("):
        return (
            f"torch {version}'s torch._scaled_mm returns a tuple; "
            "fp8 here needs the positional-scale form of torch 2.4/2.5+"
        )
    return None


def fp8_api_problem(torch=None) -> str | None:
    """Why this torch cannot run envkit's fp8 matmul (the API, not the GPU), or None."""
    torch = torch or _torch()
    version = str(getattr(torch, "__version__", "?"))
    if getattr(torch, "float8_e4m3fn", None) is None:
        return f"torch {version} has no float8_e4m3fn dtype (fp8 needs torch 2.4/2.5+)"
    try:
        schema = str(torch.ops.aten._scaled_mm.default._schema)
    except (AttributeError, RuntimeError):
        return f"torch {version} has no torch._scaled_mm (fp8 needs torch 2.4/2.5+)"
    return scaled_mm_schema_problem(schema, version)


def cuda_unsupported_reason(dtype: str, index: int) -> str | None:
    """Why CUDA device `index` cannot run `dtype` at full speed, or None if it can."""
    torch = _torch()
    major, minor = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    if dtype in ("tf32", "bf16") and major < 8:
        return f"{name} (compute capability {major}.{minor}) has no {dtype} tensor cores (needs 8.0+)"
    if dtype == "fp8":
        if (major, minor) < (8, 9):
            return f"{name} (compute capability {major}.{minor}) has no fp8 tensor cores (needs 8.9+)"
        return fp8_api_problem(torch)
    return None


class TorchKernel(MatmulKernel):
    """torch.mm (or torch._scaled_mm for fp8) with the output written in place."""

    backend = "torch"

    def __init__(self, shape: Shape, dtype: str, device: str = "cpu") -> None:
        super().__init__(shape, dtype, device)
        torch = _torch()
        self._dev = torch.device(device)
        self._cuda = self._dev.type == "cuda"
        self.layout = GPU_LAYOUT if self._cuda else CPU_LAYOUT
        self.timing = "cuda_events" if self._cuda else "host"
        if self._cuda:
            reason = cuda_unsupported_reason(dtype, self._dev.index or 0)
            if reason:
                raise KernelUnsupported(reason)
            torch.cuda.set_device(self._dev)
        elif dtype in ("tf32", "fp8"):
            raise KernelUnsupported(f"{dtype} needs an NVIDIA GPU (tensor cores); the CPU has none")
        m, n, k = shape.m, shape.n, shape.k
        if dtype == "fp8" and (m % 16 or n % 16 or k % 16):
            raise ShapeUnsupported(f"fp8 (torch._scaled_mm) needs M, N, K divisible by 16, got {shape}")

        # TF32 is a global switch in torch (off by default for matmuls): set it for this kernel.
        self._saved_precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high" if dtype == "tf32" else "highest")

        with torch.no_grad():
            if dtype == "fp8":
                fp8 = torch_dtype("fp8")
                self.a = torch.randn(m, k, device=self._dev).to(fp8)
                # _scaled_mm wants B column-major: a (n, k) row-major tensor, transposed
                self.b = torch.randn(n, k, device=self._dev).to(fp8).t()
                self._scale = torch.ones((), device=self._dev)
                out_dtype = torch.bfloat16
                self._scaled_mm_out = "out" in torch.ops.aten._scaled_mm.overloads()
            else:
                out_dtype = torch_dtype(dtype)
                self.a = torch.randn(m, k, device=self._dev, dtype=out_dtype)
                if self.layout == GPU_LAYOUT:
                    self.b = torch.randn(n, k, device=self._dev, dtype=out_dtype).t()
                else:
                    self.b = torch.randn(k, n, device=self._dev, dtype=out_dtype)
            self.c = torch.empty(m, n, device=self._dev, dtype=out_dtype)
        if self._cuda:
            self._l2 = torch.empty(GPU_FLUSH_BYTES // 4, dtype=torch.int32, device=self._dev)
        else:
            self._flusher = host_flusher()

    def run(self) -> None:
        torch = _torch()
        with torch.no_grad():
            if self.dtype == "fp8":
                if self._scaled_mm_out:
                    torch._scaled_mm(
                        self.a, self.b, self._scale, self._scale, out_dtype=self.c.dtype, out=self.c
                    )
                else:  # no out= overload in this build: a fresh output per call, as TF does
                    self.c = torch._scaled_mm(
                        self.a, self.b, self._scale, self._scale, out_dtype=self.c.dtype
                    )
            else:
                torch.mm(self.a, self.b, out=self.c)

    def prepare_call(self) -> None:
        if self._cuda:
            self._l2.zero_()
        else:
            self._flusher.flush()
        self.c.fill_(float("nan"))

    def sync(self) -> None:
        if self._cuda:
            _torch().cuda.synchronize(self._dev)

    def time_calls(self, count: int) -> list[float]:
        if not self._cuda:
            return super().time_calls(count)
        # Queue every call with CUDA events around the product only, then synchronise once:
        # a sync per call would leave the GPU idle and fold launch latency into the figure.
        torch = _torch()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(count)]
        for start, end in zip(starts, ends, strict=True):
            self.prepare_call()
            start.record()
            self.run()
            end.record()
        torch.cuda.synchronize(self._dev)
        return [start.elapsed_time(end) / 1000.0 for start, end in zip(starts, ends, strict=True)]

    def sample(self, rows: np.ndarray, cols: np.ndarray) -> ProductSample:
        torch = _torch()
        r = torch.as_tensor(rows, device=self._dev)
        c = torch.as_tensor(cols, device=self._dev)
        with torch.no_grad():
            a, b = self.a, self.b
            if self.dtype == "fp8":
                # gather fp8 as raw bytes: index kernels need not exist for float8 types
                a = a.view(torch.uint8).index_select(0, r).view(a.dtype)
                b = b.view(torch.uint8).index_select(1, c).view(b.dtype)
            else:
                a, b = a.index_select(0, r), b.index_select(1, c)
            if self.dtype == "fp8":  # fp8 casts to float32 (exactly), not straight to float64
                a, b = a.float(), b.float()
            a_rows, b_cols = a.double(), b.double()
            block = self.c.index_select(0, r).index_select(1, c).double()
        return ProductSample(a_rows.cpu().numpy(), b_cols.cpu().numpy(), block.cpu().numpy())

    def close(self) -> None:
        torch = _torch()
        torch.set_float32_matmul_precision(self._saved_precision)
        for name in ("a", "b", "c", "_l2", "_scale"):
            if hasattr(self, name):
                delattr(self, name)
        if self._cuda:
            torch.cuda.empty_cache()
