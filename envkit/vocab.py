"""The project's one vocabulary: statuses, frameworks, devices, dtypes, document format IDs.

Every area speaks these words (doctor, bench, images, training, the matrix). Older
spellings that documents already on disk may carry (`torch`, `float32`, `cuda`,
`envkit-checkpoint/1`) are read through `normalize_*` / `parse_format_id`, never written.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Status(StrEnum):
    """Outcome of one check, in doctor, bench, accept and images test alike."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    NOT_PRESENT = "not_present"
    NOT_APPLICABLE = "not_applicable"
    ERROR = "error"


# A check with one of these statuses makes the verdict "not usable" (exit 1).
FAILING_STATUSES = frozenset({Status.FAIL, Status.ERROR})


class Framework(StrEnum):
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"


class DType(StrEnum):
    """Numeric formats, named as the matrix's peak table names them."""

    FP64 = "fp64"
    FP32 = "fp32"
    TF32 = "tf32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"


_FRAMEWORK_ALIASES = {"torch": Framework.PYTORCH, "tf": Framework.TENSORFLOW}
_DEVICE_ALIASES = {"cuda": Device.GPU}
_DTYPE_ALIASES = {
    "float64": DType.FP64,
    "float32": DType.FP32,
    "bfloat16": DType.BF16,
    "float16": DType.FP16,
    "half": DType.FP16,
    "float8": DType.FP8,
    "fp8_e4m3": DType.FP8,
}


def normalize_framework(name: str) -> Framework:
    """'pytorch', 'torch', 'tf', 'tensorflow' -> Framework; ValueError otherwise."""
    key = name.strip().lower()
    return _FRAMEWORK_ALIASES.get(key) or Framework(key)


def normalize_device(name: str) -> Device:
    """'auto', 'cpu', 'gpu' (or 'cuda') -> Device; ValueError otherwise."""
    key = name.strip().lower()
    return _DEVICE_ALIASES.get(key) or Device(key)


def normalize_dtype(name: str) -> DType:
    """'fp32', 'float32', 'bf16', 'bfloat16', ... -> DType; ValueError otherwise."""
    key = name.strip().lower()
    return _DTYPE_ALIASES.get(key) or DType(key)


# One style for every document envkit writes: "envkit.<kind>/v<N>".
_FORMAT_RE = re.compile(r"^envkit[.-](?P<kind>[a-z][a-z0-9-]*)/v?(?P<version>\d+)$")


def format_id(kind: str, version: int) -> str:
    """The format ID of a document kind, e.g. format_id('checkpoint', 1) -> 'envkit.checkpoint/v1'."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", kind) or version < 1:
        raise ValueError(f"bad format kind/version {kind!r}/{version!r}")
    return f"envkit.{kind}/v{version}"


def parse_format_id(text: str) -> tuple[str, int]:
    """'envkit.checkpoint/v1' or the older 'envkit-checkpoint/1' -> ('checkpoint', 1)."""
    match = _FORMAT_RE.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not an envkit document format ID (envkit.<kind>/v<N>)")
    return match["kind"], int(match["version"])


def is_format(text: object, kind: str, max_version: int | None = None) -> bool:
    """Does `text` name document kind `kind` (any style), at a version this code can read?"""
    try:
        got_kind, version = parse_format_id(str(text))
    except ValueError:
        return False
    return got_kind == kind and (max_version is None or version <= max_version)
