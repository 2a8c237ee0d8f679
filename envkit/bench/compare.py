"""`envkit bench compare a.json b.json`: the same measurements side by side, with b/a ratios."""

from __future__ import annotations

from typing import Any

from envkit.bench.errors import BenchInputError


def _matmul_metrics(doc: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for run in doc["results"]:
        prefix = f"{run['backend']} {run['device_kind']} {run['dtype']}"
        for s in run["shapes"]:
            if s["status"] == "ok":
                key = f"{prefix} {s['m']}x{s['n']}x{s['k']}"
                # several GPUs: compare the best device, as the summary does
                metrics[key] = max(metrics.get(key, 0.0), s["tflops"]["median"])
        if run.get("best"):
            metrics[f"{prefix} best"] = max(metrics.get(f"{prefix} best", 0.0), run["best"]["tflops"])
            metrics[f"{prefix} geomean"] = max(metrics.get(f"{prefix} geomean", 0.0), run["geomean_tflops"])
    return metrics


def _memory_metrics(doc: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for r in doc["results"]:
        if r["status"] == "ok":
            metrics[r["test"]] = max(metrics.get(r["test"], 0.0), r["gbps"]["median"])
    return metrics


def _allreduce_metrics(doc: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for r in doc["results"]:
        if r["correct"]:
            # busbw is 0 by definition on one rank; algbw is then the meaningful figure
            value = r["busbw_gbps"] if r["world_size"] > 1 else r["algbw_gbps"]
            metrics[f"{r['bytes']} B"] = value
    return metrics


UNITS = {"matmul": "TFLOP/s", "memory": "GB/s", "allreduce": "GB/s"}
METRICS = {"matmul": _matmul_metrics, "memory": _memory_metrics, "allreduce": _allreduce_metrics}


def compare_documents(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rows {metric, a, b, ratio (b/a)} for every metric present in either document."""
    if a["kind"] != b["kind"]:
        raise BenchInputError(
            f"cannot compare a {a['kind']} result with a {b['kind']} result; pass two of one kind"
        )
    if a["benchmark_version"] != b["benchmark_version"]:
        note = (
            f"benchmark versions differ ({a['benchmark_version']} vs {b['benchmark_version']}): "
            "the measurement method changed between them"
        )
    else:
        note = None
    ma, mb = METRICS[a["kind"]](a), METRICS[a["kind"]](b)
    rows = []
    for key in list(dict.fromkeys([*ma, *mb])):
        va, vb = ma.get(key), mb.get(key)
        ratio = vb / va if va and vb is not None else None
        rows.append({"metric": key, "a": va, "b": vb, "ratio": ratio})
    return {"kind": a["kind"], "unit": UNITS[a["kind"]], "note": note, "rows": rows}
