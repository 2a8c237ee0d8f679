"""The bench result document: versioned schema, atomic writing, reading back.

One JSON shape serves matmul, memory and allreduce results:
`{schema, schema_version, benchmark_version, kind, created, command, options,
context, results, summary, interrupted}`. `schema_version` changes when the
layout changes; `benchmark_version` changes when the *measurement method*
changes, so that figures from different methods are never compared unknowingly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_ID = "envkit.bench"
SCHEMA_VERSION = 1
# 1: mamf-finder method (time-based warm-up, 256 MiB L2 / 2xLLC flush, NaN-refreshed
#    output, events on GPU), median as the headline, sampled float64 correctness check.
BENCHMARK_VERSION = 1
KINDS = ("matmul", "memory", "allreduce")

_NUM_OR_NULL = {"type": ["number", "null"]}

SHAPE_RESULT = {
    "type": "object",
    "required": ["m", "n", "k", "status", "tflops"],
    "properties": {
        "m": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1},
        "k": {"type": "integer", "minimum": 1},
        "status": {"enum": ["ok", "fail", "error", "skipped"]},
        "tflops": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["median", "mean", "max", "min"],
                    "properties": {
                        key: {"type": "number", "exclusiveMinimum": 0}
                        for key in ("median", "mean", "max", "min")
                    },
                },
            ]
        },
        "seconds": {
            "type": "object",
            "required": ["n", "min", "median", "mean", "max", "stdev", "spread_pct"],
        },
        "correctness": {
            "type": "object",
            "required": ["rel_error", "bound", "passed"],
            "properties": {
                "rel_error": _NUM_OR_NULL,
                "bound": {"type": "number"},
                "passed": {"type": "boolean"},
            },
        },
    },
}

MATMUL_RUN = {
    "type": "object",
    "required": [
        "backend",
        "device",
        "device_kind",
        "device_name",
        "dtype",
        "status",
        "shapes",
        "best",
        "geomean_tflops",
        "peak_tflops",
        "peak_reason",
        "efficiency",
        "throttled",
    ],
    "properties": {
        "backend": {"enum": ["numpy", "torch", "tensorflow"]},
        "device_kind": {"enum": ["cpu", "gpu"]},
        "dtype": {"enum": ["fp64", "fp32", "tf32", "fp16", "bf16", "fp8"]},
        "status": {"enum": ["ok", "fail", "error", "partial", "skipped", "interrupted"]},
        "shapes": {"type": "array", "items": SHAPE_RESULT},
        "peak_tflops": _NUM_OR_NULL,
        "peak_reason": {"type": ["string", "null"]},
        "efficiency": _NUM_OR_NULL,
        "geomean_tflops": _NUM_OR_NULL,
        "throttled": {"type": ["boolean", "null"]},
    },
    # an unknown peak must say why
    "if": {"properties": {"peak_tflops": {"type": "null"}}},
    "then": {"properties": {"peak_reason": {"type": "string", "minLength": 1}}},
}

MEMORY_RESULT = {
    "type": "object",
    "required": ["test", "device", "bytes", "gbps", "seconds", "status"],
    "properties": {
        "test": {"type": "string"},
        "bytes": {"type": "integer", "minimum": 1},
        "gbps": {"type": ["object", "null"]},
        "status": {"enum": ["ok", "fail", "error", "skipped"]},
    },
}

ALLREDUCE_RESULT = {
    "type": "object",
    "required": ["bytes", "seconds", "algbw_gbps", "busbw_gbps", "correct", "world_size"],
    "properties": {
        "bytes": {"type": "integer", "minimum": 1},
        "algbw_gbps": _NUM_OR_NULL,
        "busbw_gbps": _NUM_OR_NULL,
        "correct": {"type": "boolean"},
        "world_size": {"type": "integer", "minimum": 1},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "schema",
        "schema_version",
        "benchmark_version",
        "kind",
        "created",
        "command",
        "context",
        "results",
        "summary",
        "interrupted",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "schema_version": {"const": SCHEMA_VERSION},
        "benchmark_version": {"type": "integer", "minimum": 1},
        "kind": {"enum": list(KINDS)},
        "created": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "context": {"type": "object", "required": ["host"]},
        "results": {"type": "array"},
        "summary": {"type": "object"},
    },
    "allOf": [
        {
            "if": {"properties": {"kind": {"const": kind}}},
            "then": {"properties": {"results": {"items": items}}},
        }
        for kind, items in (
            ("matmul", MATMUL_RUN),
            ("memory", MEMORY_RESULT),
            ("allreduce", ALLREDUCE_RESULT),
        )
    ],
}


class ReportError(ValueError):
    """A result file that cannot be read or is not an envkit bench document."""


def new_document(kind: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """An empty result document with the host context filled in."""
    from envkit.bench.context import host_context

    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "benchmark_version": BENCHMARK_VERSION,
        "kind": kind,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "options": options or {},
        "context": {"host": host_context()},
        "results": [],
        "summary": {},
        "interrupted": False,
    }


def validate(doc: Any) -> list[str]:
    """Schema violations of a document, as readable lines (empty when valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=_jsonable) + "\n"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as shareable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_document(doc: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(Path(path), dumps(doc).encode())


def load_document(path: Path) -> dict[str, Any]:
    """Read and validate a result file; ReportError with a one-line reason otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"{path}: no such file; pass a JSON file written by `envkit bench ... --out`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not JSON ({exc.msg} at line {exc.lineno}); pass a bench --out file"
        ) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        raise ReportError(f'{path}: not an envkit bench result (no "schema": "{SCHEMA_ID}")')
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(
            f"{path}: schema version {doc.get('schema_version')} but this envkit reads {SCHEMA_VERSION}; "
            "re-run the benchmark with this envkit"
        )
    problems = validate(doc)
    if problems:
        raise ReportError(f"{path}: invalid bench result: {problems[0]}")
    return doc
