"""Rich tables for bench results (the same data `--json` prints for machines)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from envkit.bench.report import BACKEND_WORDS


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


STATUS_STYLE = {
    "ok": "green",
    "fail": "bold red",
    "error": "red",
    "skipped": "yellow",
    "partial": "yellow",
    "interrupted": "yellow",
}


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def backend_word(backend: str) -> str:
    """The project's name of a backend (the matmul engine says `torch` while it runs)."""
    return BACKEND_WORDS.get(backend, backend)


def shape_row(run: dict[str, Any], s: dict[str, Any]) -> str:
    """One completed shape as a line printed while the sweep runs."""
    shape = f"{s['m']}x{s['n']}x{s['k']}"
    head = f"{backend_word(run['backend']):<10} {run['device']:<7} {run['dtype']:<5} {shape:>17}"
    if s["status"] == "ok":
        t = s["tflops"]
        err = s["correctness"]["rel_error"]
        return (
            f"{head}  {fmt(t['median']):>8} TFLOP/s median  (max {fmt(t['max'])}, mean {fmt(t['mean'])}, "
            f"spread {s['spread_pct']:.1f}%, rel.err {err:.1e})  {status_text('ok')}"
        )
    return f"{head}  {status_text(s['status'])}  {s.get('message') or ''}"


def matmul_summary_table(doc: dict[str, Any]) -> Table:
    names = {r["device"]: r["device_name"] for r in doc["results"]}
    caption = "; ".join(f"{device}: {name}" for device, name in names.items())
    table = Table(
        title="matmul: best shape per backend, device and dtype (TFLOP/s = median)",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    for col in (
        "backend",
        "device",
        "dtype",
        "best shape",
        "TFLOP/s",
        "geomean",
        "peak",
        "efficiency",
        "throttled",
        "status",
    ):
        table.add_column(
            col, justify="right" if col in ("TFLOP/s", "geomean", "peak", "efficiency") else "left"
        )
    for run in doc["results"]:
        best = run.get("best") or {}
        throttled = run.get("throttled")
        table.add_row(
            run["backend"],
            run["device"],
            run["dtype"],
            best.get("shape", "—"),
            fmt(best.get("tflops")),
            fmt(run.get("geomean_tflops")),
            fmt(run.get("peak_tflops")) if run.get("peak_tflops") else "null",
            pct(run.get("efficiency")),
            "—" if throttled is None else ("[bold red]yes[/]" if throttled else _not_throttled(run)),
            status_text(run["status"]) + (f" {run['message']}" if run.get("message") else ""),
        )
    return table


def _not_throttled(run: dict[str, Any]) -> str:
    """'no', or 'no (power-limited)' for a GPU at its power limit: expected under load."""
    state = (run.get("telemetry") or {}).get("clock_state") or ""
    return "no (power-limited)" if state.startswith("power-limited") else "no"


def matmul_notes(doc: dict[str, Any]) -> list[str]:
    """Lines under the tables: peak reasons, throttling, slowest GPU."""
    notes = []
    reasons = sorted({r["peak_reason"] for r in doc["results"] if r.get("peak_reason")})
    notes += [f"peak: n/a ({reason})" for reason in reasons]
    for run in doc["results"]:
        telemetry = run.get("telemetry") or {}
        for why in telemetry.get("throttled_because") or []:
            notes.append(f"[bold red]throttled[/] {run['device']} {run['dtype']}: {why}")
        if telemetry.get("clock_state") and not telemetry.get("throttled"):
            # e.g. "power-limited (expected under load)": evidence, not a failure
            evidence = telemetry.get("clock_evidence") or ""
            notes.append(f"clocks {run['device']} {run['dtype']}: {telemetry['clock_state']}, {evidence}")
    notes += sorted(
        {f"{r['backend']} {r['device']}: {r['timing_note']}" for r in doc["results"] if r.get("timing_note")}
    )
    for row in doc.get("summary", {}).get("rows", []):
        slow = row.get("slowest")
        if slow:
            notes.append(
                f"slowest GPU for {row['backend']} {row['dtype']}: {slow['device']} ({slow['name']}) "
                f"at {fmt(slow['tflops'])} TFLOP/s, {pct(slow['vs_fastest'])} of the fastest"
            )
    return notes


def memory_table(doc: dict[str, Any]) -> Table:
    table = Table(title="memory bandwidth (GB/s = 10^9 B/s; copies count read + write)", title_justify="left")
    for col in ("test", "device", "size", "median GB/s", "max", "min", "spread", "status"):
        table.add_column(col)
    for r in doc["results"]:
        g = r.get("gbps") or {}
        spread = (r.get("seconds") or {}).get("spread_pct")
        table.add_row(
            r["test"],
            f"{r['device']} {r.get('device_name', '')}"[:40],
            f"{r['bytes'] // 1024**2} MiB",
            fmt(g.get("median")),
            fmt(g.get("max")),
            fmt(g.get("min")),
            "—" if spread is None else f"{spread:.1f}%",
            status_text(r["status"]),
        )
    return table


def allreduce_table(doc: dict[str, Any]) -> Table:
    summary = doc.get("summary", {})
    table = Table(
        title=f"all-reduce ({summary.get('backend')}, {summary.get('world_size')} ranks; "
        f"busbw = algbw·2(n−1)/n = algbw·{summary.get('busbw_factor', 0):.3g})",
        title_justify="left",
    )
    for col in ("size", "time", "algbw GB/s", "busbw GB/s", "correct"):
        table.add_column(col, justify="right")
    for r in doc["results"]:
        table.add_row(
            human_bytes(r["bytes"]),
            f"{r['seconds'] * 1e6:.1f} µs",
            fmt(r["algbw_gbps"]),
            fmt(r["busbw_gbps"]),
            "[green]yes[/]" if r["correct"] else "[bold red]NO[/]",
        )
    return table


def compare_table(result: dict[str, Any], a_name: str, b_name: str) -> Table:
    table = Table(title=f"compare {result['kind']} ({result['unit']}): ratio = b / a", title_justify="left")
    table.add_column("metric")
    table.add_column(f"a: {a_name}", justify="right")
    table.add_column(f"b: {b_name}", justify="right")
    table.add_column("b / a", justify="right")
    for row in result["rows"]:
        ratio = row["ratio"]
        style = "" if ratio is None else ("green" if ratio >= 1.05 else ("red" if ratio <= 0.95 else ""))
        ratio_text = "—" if ratio is None else f"{ratio:.3f}"
        table.add_row(
            row["metric"], fmt(row["a"]), fmt(row["b"]), f"[{style}]{ratio_text}[/]" if style else ratio_text
        )
    return table


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"
