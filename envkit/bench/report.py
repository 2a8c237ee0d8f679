"""The bench result document: versioned schema, atomic writing, reading back.

One JSON shape serves matmul, memory and allreduce results:
`{schema, schema_version, benchmark_version, kind, created, command, options,
context, results, summary, interrupted}`. `schema` is the format ID
`envkit.bench/v<schema_version>` (envkit.vocab's one style); `schema_version`
changes when the layout changes; `benchmark_version` changes when the
*measurement method* changes, so that figures from different methods are never
compared unknowingly.

Documents written before the vocabulary was fixed say `"schema": "envkit.bench"`
and name the PyTorch backend `torch`; `load_document` reads them and
`normalize_document` brings them (and the matmul engine's own `torch`) to the
project's words: `pytorch`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from envkit.atomic import atomic_write_bytes
from envkit.cli_support import UsageError, json_default
from envkit.vocab import Framework, Status, format_id, is_format, parse_format_id

# atomic_write_bytes is envkit.atomic's; envkit/bench/plot.py and benchmarks/bench_overhead.py
# still import it from here.

SCHEMA_VERSION = 1
SCHEMA_ID = format_id("bench", SCHEMA_VERSION)  # "envkit.bench/v1"
LEGACY_SCHEMA_ID = "envkit.bench"  # before the one format-ID style; schema_version said the version
# The matmul engine's internal backend names -> the project's framework words (documents say these).
BACKEND_WORDS = {"torch": str(Framework.PYTORCH)}
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
        # "torch": what the matmul engine says internally; normalize_document writes "pytorch"
        "backend": {"enum": ["numpy", "pytorch", "tensorflow", "torch"]},
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
        "schema": {"enum": [SCHEMA_ID, LEGACY_SCHEMA_ID]},
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


class ReportError(UsageError, ValueError):
    """A result file that cannot be read or is not an envkit bench document (exit 2 at the CLI)."""


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
    return json.dumps(doc, indent=2, default=json_default) + "\n"


def normalize_document(doc: dict[str, Any]) -> dict[str, Any]:
    """Bring a document to the current words, in place: format ID, `pytorch` for `torch`.

    Used on every document the CLI writes and on every one it reads, so that documents
    written before the change compare with new ones.
    """
    if doc.get("schema") == LEGACY_SCHEMA_ID:
        doc["schema"] = format_id("bench", int(doc.get("schema_version") or SCHEMA_VERSION))
    context = doc.get("context")
    if isinstance(context, dict):
        for holder in (context, context.get("frameworks")):
            if isinstance(holder, dict) and "torch" in holder and "pytorch" not in holder:
                holder["pytorch"] = holder.pop("torch")
    if doc.get("kind") == "matmul":
        for run in doc.get("results") or []:
            if isinstance(run, dict) and run.get("backend") in BACKEND_WORDS:
                run["backend"] = BACKEND_WORDS[run["backend"]]
        options = doc.get("options")
        if isinstance(options, dict) and isinstance(options.get("backends"), list):
            options["backends"] = [BACKEND_WORDS.get(b, b) for b in options["backends"]]
    return doc


def is_ok(doc: dict[str, Any]) -> bool:
    """Did every measurement of the document succeed (summary status `ok`)?"""
    return doc.get("summary", {}).get("status") == Status.OK


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
    if not isinstance(doc, dict) or not (
        doc.get("schema") == LEGACY_SCHEMA_ID or is_format(doc.get("schema"), "bench")
    ):
        raise ReportError(f'{path}: not an envkit bench result (no "schema": "{SCHEMA_ID}")')
    # the version: in the format ID now, in schema_version alone in legacy documents
    version = doc.get("schema_version")
    if doc["schema"] != LEGACY_SCHEMA_ID:
        version = parse_format_id(doc["schema"])[1]
    if version != SCHEMA_VERSION or doc.get("schema_version") != version:
        shown = version if version != SCHEMA_VERSION else doc.get("schema_version")
        raise ReportError(
            f"{path}: schema version {shown} but this envkit reads {SCHEMA_VERSION}; "
            "re-run the benchmark with this envkit"
        )
    problems = validate(doc)
    if problems:
        raise ReportError(f"{path}: invalid bench result: {problems[0]}")
    return normalize_document(doc)
