"""The version matrix: typed access to ``envkit/data/matrix.yaml``.

Everything that names a version (images, Ansible defaults, doctor's
compatibility verdicts, bench's peak table) reads it through this module.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8")


class MatrixError(ValueError):
    """The matrix file is malformed or a lookup names something it lacks."""


def version_tuple(version: str) -> tuple[int, ...]:
    """'535.54.03' -> (535, 54, 3); non-numeric parts are dropped."""
    parts = []
    for piece in str(version).replace("-", ".").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if digits == "":
            break
        parts.append(int(digits))
    return tuple(parts)


def major_minor(version: str) -> str:
    """'2.13.0+cpu' -> '2.13'; '12.5.1' -> '12.5'."""
    t = version_tuple(version)
    if len(t) < 2:
        raise MatrixError(f"cannot read a major.minor version from {version!r}")
    return f"{t[0]}.{t[1]}"


@dataclass(frozen=True)
class Source:
    url: str
    read: str


@dataclass(frozen=True)
class DriverRequirement:
    """What a CUDA version needs from the kernel driver."""

    cuda: str
    minor_compat_floor: str  # runs at all (minor-version compatibility)
    toolkit_driver: str | None  # runs without caveats


@dataclass(frozen=True)
class GpuPeak:
    name: str
    match: tuple[str, ...]  # the exact nvmlDeviceGetName strings of this SKU
    tflops: dict[str, float | None]
    sms: int | None = None  # the whole GPU's SM count (scales a MIG slice)

    def peak(self, dtype: str) -> float | None:
        if dtype not in DTYPES:
            raise MatrixError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        return self.tflops.get(dtype)


# nvmlDeviceGetName / torch name of a MIG device: "<whole GPU's name> MIG <profile>",
# e.g. "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA A100-SXM4-40GB MIG 3g.20gb".
_MIG_NAME = re.compile(r"^(?P<base>.+?)\s+MIG\s+(?P<profile>\d+g\.\d+gb(?:\+\w+)?)$", re.IGNORECASE)


def _name_key(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def split_mig_name(name: str) -> tuple[str, str | None]:
    """'NVIDIA H100 80GB HBM3 MIG 1g.10gb' -> ('NVIDIA H100 80GB HBM3', '1g.10gb'); no MIG: (name, None)."""
    match = _MIG_NAME.match(" ".join(str(name).split()))
    if not match:
        return str(name).strip(), None
    return match["base"], match["profile"]


@dataclass(frozen=True)
class PeakLookup:
    """A GPU's dense peak for one dtype, or why there is none."""

    tflops: float | None
    reason: str | None  # set whenever tflops is None
    row: GpuPeak | None = None
    mig_profile: str | None = None
    scale: float = 1.0  # a MIG slice's share of the whole GPU's SMs


@dataclass(frozen=True)
class ImageRow:
    name: str
    framework: str
    version: str
    package: str
    variant: str
    cuda: str | None
    python: str
    base_image: str
    wheel_index: str
    tag: str
    size_budget_mb: int

    @property
    def key(self) -> str:
        return f"{self.name}-{self.variant}"

    def labels(self) -> dict[str, str]:
        """The envkit OCI labels an image built from this row carries."""
        return {
            "io.envkit.framework": self.framework,
            "io.envkit.framework.version": self.version,
            "io.envkit.variant": self.variant,
            "io.envkit.cuda": self.cuda or "none",
            "io.envkit.python": self.python,
        }


@dataclass(frozen=True)
class Matrix:
    schema_version: int
    cuda_floor: dict[str, str]
    toolkit_driver: dict[str, str]
    pytorch_cuda: dict[str, tuple[str, ...]]
    tensorflow_cuda: dict[str, dict[str, str]]
    gpus: tuple[GpuPeak, ...]
    images: tuple[ImageRow, ...]
    ansible: dict[str, str]
    sources: dict[str, Source] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- CUDA / driver -----------------------------------------------------
    def driver_requirement(self, cuda: str) -> DriverRequirement:
        """Minimum drivers for a CUDA version such as '12.4' or '12.4.1'."""
        mm = major_minor(cuda)
        major = mm.split(".")[0]
        if major not in self.cuda_floor:
            raise MatrixError(f"CUDA {cuda}: no driver floor for major {major} in the matrix")
        return DriverRequirement(mm, self.cuda_floor[major], self.toolkit_driver.get(mm))

    def driver_verdict(self, driver: str, cuda: str) -> tuple[str, str]:
        """('ok'|'warn'|'fail', reason) for running CUDA `cuda` on `driver`."""
        req = self.driver_requirement(cuda)
        have = version_tuple(driver)
        if have < version_tuple(req.minor_compat_floor):
            return "fail", (
                f"driver {driver} is older than {req.minor_compat_floor}, the minimum for "
                f"CUDA {req.cuda}; install driver >= {req.toolkit_driver or req.minor_compat_floor}"
            )
        if req.toolkit_driver and have < version_tuple(req.toolkit_driver):
            return "warn", (
                f"driver {driver} runs CUDA {req.cuda} only through minor-version compatibility "
                f"(toolkit driver {req.toolkit_driver}); PTX JIT and newer APIs may fail"
            )
        return "ok", f"driver {driver} >= {req.toolkit_driver or req.minor_compat_floor} for CUDA {req.cuda}"

    # -- GPUs --------------------------------------------------------------
    def gpu(self, nvml_name: str) -> GpuPeak | None:
        """The peak row whose NVML names include `nvml_name` exactly (a MIG suffix is ignored)."""
        base, _ = split_mig_name(nvml_name)
        key = _name_key(base)
        for row in self.gpus:
            if any(_name_key(name) == key for name in row.match):
                return row
        return None

    def peak_lookup(self, nvml_name: str, dtype: str, sm_count: int | None = None) -> PeakLookup:
        """The dense `dtype` peak of the GPU named `nvml_name`, scaled to a MIG slice's SMs.

        `sm_count` is the device's multiprocessor count as CUDA reports it (for a MIG
        slice, the slice's own). Never raises for an unknown GPU: the reason says what to do.
        """
        if dtype not in DTYPES:
            raise MatrixError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        base, profile = split_mig_name(nvml_name)
        row = self.gpu(nvml_name)
        if row is None:
            return PeakLookup(None, f"unknown GPU {base!r}: add it to matrix.yaml")
        peak = row.peak(dtype)
        if peak is None:
            return PeakLookup(None, f"the matrix lists no dense {dtype} peak for {row.name}", row, profile)
        if profile is None and (sm_count is None or row.sms is None or sm_count >= row.sms):
            return PeakLookup(peak, None, row)
        # A MIG slice (or a device CUDA reports with fewer SMs): its share of the whole GPU.
        what = f"MIG slice {profile} of {row.name}" if profile else f"{row.name} with {sm_count} SMs"
        if row.sms is None:
            return PeakLookup(
                None, f"{what}: the matrix lacks {row.name}'s SM count to scale by", row, profile
            )
        if sm_count is None:
            return PeakLookup(
                None,
                f"{what}: its SM count is unknown, so its share of the {row.sms}-SM peak is too",
                row,
                profile,
            )
        scale = sm_count / row.sms
        return PeakLookup(peak * scale, None, row, profile, scale)

    def peak_tflops(self, nvml_name: str, dtype: str, sm_count: int | None = None) -> float | None:
        return self.peak_lookup(nvml_name, dtype, sm_count).tflops

    # -- images ------------------------------------------------------------
    def image(self, name: str, variant: str = "cpu") -> ImageRow:
        for row in self.images:
            if row.name == name and row.variant == variant:
                return row
        known = ", ".join(sorted({r.key for r in self.images}))
        raise MatrixError(f"no image {name!r} with variant {variant!r}; known: {known}")


def _source(table: dict[str, Any], name: str) -> Source:
    try:
        return Source(url=str(table["source"]), read=str(table["read"]))
    except KeyError as exc:
        raise MatrixError(f"table {name!r} lacks its {exc.args[0]!r}") from None


def parse_matrix(data: dict[str, Any]) -> Matrix:
    """Build a Matrix from the parsed YAML mapping."""
    try:
        cd = data["cuda_driver"]
        pt = data["pytorch_cuda"]
        tf = data["tensorflow_cuda"]
        gp = data["gpu_peak_tflops"]
        gpus = tuple(
            GpuPeak(
                name=g["name"],
                match=tuple(str(n) for n in g["nvml_names"]),
                tflops={d: (None if g.get(d) is None else float(g[d])) for d in DTYPES},
                sms=None if g.get("sms") is None else int(g["sms"]),
            )
            for g in gp["gpus"]
        )
        images = tuple(
            ImageRow(
                name=r["name"],
                framework=r["framework"],
                version=str(r["version"]),
                package=r["package"],
                variant=r["variant"],
                cuda=None if r.get("cuda") is None else str(r["cuda"]),
                python=str(r["python"]),
                base_image=r["base_image"],
                wheel_index=r["wheel_index"],
                tag=r["tag"],
                size_budget_mb=int(r["size_budget_mb"]),
            )
            for r in data["images"]
        )
        return Matrix(
            schema_version=int(data["schema_version"]),
            cuda_floor={str(k): str(v) for k, v in cd["minor_compat_floor"].items()},
            toolkit_driver={str(k): str(v) for k, v in cd["toolkit_driver"].items()},
            pytorch_cuda={str(k): tuple(str(c) for c in v) for k, v in pt["builds"].items()},
            tensorflow_cuda={str(k): {kk: str(vv) for kk, vv in v.items()} for k, v in tf["tested"].items()},
            gpus=gpus,
            images=images,
            ansible={str(k): str(v) for k, v in data["ansible"].items()},
            sources={
                "cuda_driver": _source(cd, "cuda_driver"),
                "pytorch_cuda": _source(pt, "pytorch_cuda"),
                "tensorflow_cuda": _source(tf, "tensorflow_cuda"),
                "gpu_peak_tflops": _source(gp, "gpu_peak_tflops"),
            },
            raw=data,
        )
    except (KeyError, TypeError) as exc:
        raise MatrixError(f"matrix is malformed: missing or wrong {exc}") from None


def matrix_path() -> Path:
    """Where the packaged matrix lives on disk."""
    return Path(str(resources.files("envkit") / "data" / "matrix.yaml"))


@functools.lru_cache(maxsize=4)
def load_matrix(path: str | None = None) -> Matrix:
    """Load (and cache) the matrix; `path` overrides the packaged file."""
    p = Path(path) if path else matrix_path()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(f"matrix file not found: {p}") from None
    except yaml.YAMLError as exc:
        raise MatrixError(f"matrix file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MatrixError(f"matrix file {p} must hold a mapping")
    return parse_matrix(data)
