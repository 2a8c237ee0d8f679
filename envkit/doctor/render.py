"""Render a doctor report for people: a Rich table grouped by area, then a verdict."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from envkit.doctor.model import ERROR, FAIL, NOT_APPLICABLE, NOT_PRESENT, OK, WARN, Report

STYLE = {
    OK: ("ok", "green"),
    WARN: ("warn", "yellow"),
    FAIL: ("FAIL", "bold red"),
    ERROR: ("ERROR", "bold magenta"),
    NOT_PRESENT: ("absent", "dim"),
    NOT_APPLICABLE: ("n/a", "dim"),
}


def report_table(report: Report) -> Table:
    table = Table(title="envkit doctor", title_justify="left", show_lines=False, expand=False)
    table.add_column("area", style="bold", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("evidence / fix", overflow="fold")
    previous = None
    for check in report.checks:
        if previous is not None and check.area != previous:
            table.add_section()
        label, style = STYLE[check.status]
        body = Text(check.evidence)
        if check.hint and check.status != NOT_APPLICABLE:
            body.append("\n-> " + check.hint, style="cyan")
        table.add_row(
            check.area if check.area != previous else "", check.name, Text(label, style=style), body
        )
        previous = check.area
    return table


def print_report(report: Report, console: Console) -> None:
    console.print(report_table(report))
    style = "bold green" if report.usable else "bold red"
    console.print(Text(report.verdict(), style=style), f"({report.elapsed_s:.1f} s)")
