"""Stage entry points that the CLI calls: each validates first, runs, and records the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from training.core.config import TrainConfig
from training.core.prepare import load_sources, prepare
from training.core.report import make_plots, read_report, update_report
from training.engines.base import DistInfo


def run_prepare(cfg: TrainConfig) -> dict[str, Any]:
    result = prepare(cfg)
    data = result.to_dict()
    update_report(Path(cfg.run_dir), "prepare", data)
    return data


def _stage(cfg: TrainConfig, name: str, dist: DistInfo) -> dict[str, Any]:
    from training.core import loop

    t0 = time.perf_counter()
    fn = {"pretrain": loop.pretrain, "finetune": loop.finetune, "test": loop.test}[name]
    result = fn(cfg, dist=dist)
    data = result.to_dict()
    data["seconds"] = round(time.perf_counter() - t0, 2)
    if dist.is_main:
        update_report(Path(cfg.run_dir), name, data)
    return data


def run_stage(cfg: TrainConfig, name: str) -> dict[str, Any]:
    """Run `pretrain`, `finetune` or `test` on a prepared run directory."""
    dist = DistInfo.from_env()
    data = _stage(cfg, name, dist)
    if dist.is_main:
        finish(cfg)
    return data


def finish(cfg: TrainConfig) -> dict[str, Any]:
    """Plots + the summary block of report.json; returns the report."""
    run_dir = Path(cfg.run_dir)
    plots = make_plots(run_dir)
    report = read_report(run_dir)
    summary = summarize(report)
    summary["plots"] = plots
    summary["engine"] = cfg.engine
    return update_report(run_dir, "summary", summary)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a person wants first."""
    out: dict[str, Any] = {}
    pre = report.get("pretrain", {}).get("metrics", {})
    if pre:
        out.update(
            pretrain_steps=report["pretrain"].get("step"),
            params=pre.get("params"),
            best_val_loss=pre.get("best_val_loss"),
            val_ppl=pre.get("val_ppl"),
            tokens_per_s=pre.get("tokens_per_s"),
            mfu=pre.get("mfu"),
        )
    ft = report.get("finetune", {}).get("metrics", {})
    if ft:
        out.update(
            best_val_accuracy=ft.get("best_val_accuracy"),
            best_val_f1=ft.get("best_val_f1"),
            init=ft.get("init"),
        )
    test = report.get("test", {}).get("metrics", {})
    if "classification" in test:
        c = test["classification"]
        out.update(
            test_accuracy=c["accuracy"],
            test_precision=c["precision"],
            test_recall=c["recall"],
            test_f1=c["f1"],
            confusion=c["confusion"],
            classes=c["classes"],
        )
    if "lm" in test:
        out["test_ppl"] = test["lm"]["test_ppl"]
    return out


def _wait_for_prepared(cfg: TrainConfig, timeout_s: float = 1800.0) -> None:
    """Other ranks wait while rank 0 prepares (there is no process group before the engine)."""
    from training.core.prepare import is_prepared

    deadline = time.monotonic() + timeout_s
    while not is_prepared(cfg):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank waited {timeout_s:.0f} s for rank 0 to prepare {cfg.prepared_path()}")
        time.sleep(0.5)


def run_cycle(cfg: TrainConfig, on_stage=None) -> dict[str, Any]:
    """prepare -> pretrain -> finetune -> test; stops (status preempted) if a stage was preempted."""
    dist = DistInfo.from_env()
    t0 = time.perf_counter()
    sources = load_sources(cfg)  # every input checked before the run directory exists
    if dist.is_main:
        result = prepare(cfg, sources)
        update_report(Path(cfg.run_dir), "prepare", result.to_dict())
        if on_stage:
            on_stage("prepare", result.to_dict())
    else:
        _wait_for_prepared(cfg)
    status = "completed"
    for name in ("pretrain", "finetune", "test"):
        data = _stage(cfg, name, dist)
        if on_stage:
            on_stage(name, data)
        if data["status"] == "preempted":
            status = "preempted"
            break
    if not dist.is_main:
        return {"status": status}
    report = finish(cfg)
    report = update_report(
        Path(cfg.run_dir), "cycle", {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
    )
    return report
