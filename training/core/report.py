"""The run's report.json and its PNG plots (loss, accuracy), from metrics.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from envkit.atomic import atomic_write_bytes, atomic_write_text
from envkit.vocab import format_id, is_format
from training.core.metrics import read_metrics

REPORT = "report.json"
REPORT_FORMAT = format_id("train-report", 1)


def update_report(run_dir: Path, section: str, data: dict[str, Any]) -> dict[str, Any]:
    """Set `section` of run_dir/report.json (atomically) and return the whole report."""
    path = run_dir / REPORT
    report: dict[str, Any] = {}
    if path.is_file():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            report = {}
    if not is_format(report.get("format"), "train-report", 1):
        report["format"] = REPORT_FORMAT  # also rewrites the older spelling "envkit-train-report/1"
    report[section] = data
    report["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return report


def read_report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / REPORT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _latest_by_step(records: list[dict[str, Any]], stage: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in `stage`, last write winning (a resumed run repeats steps)."""
    seen: dict[int, float] = {}
    for r in records:
        if r.get("stage") == stage and r.get(key) is not None:
            seen[int(r["step"])] = float(r[key])
    steps = sorted(seen)
    return steps, [seen[s] for s in steps]


def make_plots(run_dir: Path) -> list[str]:
    """Write plots/loss.png and plots/accuracy.png; return the paths written."""
    records = read_metrics(run_dir)
    if not records:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    for key, label in (("loss", "train loss"), ("val_loss", "validation loss")):
        steps, values = _latest_by_step(records, "pretrain", key)
        if steps:
            ax.plot(steps, values, marker="o" if key == "val_loss" else None, label=label)
    ax.set_title("pretraining (causal LM)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    ax = axes[1]
    for key, label in (("loss", "train loss"), ("val_loss", "validation loss")):
        steps, values = _latest_by_step(records, "finetune", key)
        if steps:
            ax.plot(steps, values, marker="o" if key == "val_loss" else None, label=label)
    ax.set_title("fine-tuning (classifier)")
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_dir / "loss.png", buf.getvalue())
    written.append(str(out_dir / "loss.png"))

    acc_steps, acc = _latest_by_step(records, "finetune", "val_accuracy")
    if acc_steps:
        _, f1 = _latest_by_step(records, "finetune", "val_f1")
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot(acc_steps, acc, marker="o", label="validation accuracy")
        if len(f1) == len(acc_steps):
            ax.plot(acc_steps, f1, marker="s", label="validation F1")
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimizer step (end of each epoch)")
        ax.set_title("fine-tuning")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(out_dir / "accuracy.png", buf.getvalue())
        written.append(str(out_dir / "accuracy.png"))
    return written
