"""Progress: a Rich bar on a terminal, plain log lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
from typing import Any


def format_record(record: dict[str, Any]) -> str:
    """`stage step k/n | loss 2.31 | lr 3.0e-03 | ...` from a metrics record."""
    keys = [
        ("loss", "loss {:.4f}"),
        ("val_loss", "val_loss {:.4f}"),
        ("val_ppl", "val_ppl {:.2f}"),
        ("val_accuracy", "val_acc {:.4f}"),
        ("val_f1", "val_f1 {:.4f}"),
        ("lr", "lr {:.2e}"),
        ("grad_norm", "gnorm {:.3f}"),
        ("step_ms", "{:.0f} ms/step"),
        ("tokens_per_s", "{:,.0f} tok/s"),
        ("mfu", "mfu {:.1%}"),
        ("peak_mem_mb", "mem {:.0f} MB"),
    ]
    head = f"{record['stage']} step {record['step']}"
    if "epoch" in record:
        head += f" epoch {record['epoch']}"
    parts = [head]
    for key, fmt in keys:
        value = record.get(key)
        if value is not None:
            parts.append(fmt.format(value))
    if record.get("skipped_steps"):
        parts.append(f"{record['skipped_steps']} skipped (fp16 overflow)")
    if "mfu" in record and record["mfu"] is None:
        parts.append("mfu n/a")  # no peak to compare with: CPU or a GPU missing from the matrix
    return " | ".join(parts)


class StageProgress:
    """One stage's progress; `mode` is auto | bar | plain | off."""

    def __init__(self, stage: str, total: int, start: int, mode: str = "auto", enabled: bool = True) -> None:
        self.stage, self.total = stage, total
        if not enabled:
            mode = "off"
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self._progress = None
        if mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(f"[bold]{stage}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(stage, total=total, completed=start, info="")

    def advance(self, done: int, info: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, info=info)

    def log(self, line: str) -> None:
        if self.mode == "off":
            return
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
