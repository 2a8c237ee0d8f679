"""Stage entry points that the CLI calls: each validates first, runs, and records the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.core.config import ConfigError, TrainConfig
from training.core.data import META
from training.core.prepare import load_sources, prepare
from training.core.report import make_plots, read_report, update_report
from training.engines.base import DistInfo


def _stage_functions(cfg: TrainConfig) -> dict[str, Callable[..., Any]]:
    """The stages of this run: the GPT's own, or (`pretrained=` set) Hugging Face fine-tuning's."""
    if cfg.hf.enabled:
        from training.hf import stages as hf

        return {"finetune": hf.finetune, "test": hf.test}  # a pretrained model: nothing to pretrain
    from training.core import loop

    return {"pretrain": loop.pretrain, "finetune": loop.finetune, "test": loop.test}


def _check_stage(cfg: TrainConfig, name: str) -> None:
    if name not in _stage_functions(cfg):
        raise ConfigError(
            f"pretrained={cfg.hf.model} fine-tunes an already trained model, so there is no {name} "
            "stage; run `envkit train finetune` (then `test`), or drop pretrained= to train the GPT"
        )


def run_prepare(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.hf.enabled:
        from training.hf import stages as hf

        data = hf.prepare(cfg)
    else:
        data = prepare(cfg).to_dict()
    update_report(Path(cfg.runtime.run_dir), "prepare", data)
    return data


def _stage(cfg: TrainConfig, name: str, dist: DistInfo) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = _stage_functions(cfg)[name](cfg, dist=dist)
    data = result.to_dict()
    data["seconds"] = round(time.perf_counter() - t0, 2)
    if dist.is_main:
        update_report(Path(cfg.runtime.run_dir), name, data)
    return data


def run_stage(cfg: TrainConfig, name: str, note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run `pretrain`, `finetune` or `test` on a run directory.

    A training stage on a directory with no prepared data prepares it first (as `cycle`
    does) and says so through `note`; prepared data that no longer fits the config
    stays an error (`open_prepared`).
    """
    _check_stage(cfg, name)
    dist = DistInfo.from_env()
    fresh = not cfg.hf.enabled and not (cfg.prepared_path() / META).is_file()
    if name in ("pretrain", "finetune") and fresh:
        sources = load_sources(cfg)  # every input checked before the run directory exists
        if dist.is_main:
            if note is not None:
                note(f"{name}: {cfg.prepared_path()} has no prepared data; preparing it first")
            result = prepare(cfg, sources)
            update_report(Path(cfg.runtime.run_dir), "prepare", result.to_dict())
        else:
            _wait_for_prepared(cfg)
    data = _stage(cfg, name, dist)
    if dist.is_main:
        finish(cfg)
    return data


def finish(cfg: TrainConfig) -> dict[str, Any]:
    """Plots + the summary block of report.json; returns the report."""
    run_dir = Path(cfg.runtime.run_dir)
    plots = make_plots(run_dir)
    report = read_report(run_dir)
    summary = summarize(report)
    summary["plots"] = plots
    summary["engine"] = cfg.runtime.engine
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
    """prepare -> pretrain -> finetune -> test (no pretrain with `pretrained=`); stops on a preemption."""
    dist = DistInfo.from_env()
    t0 = time.perf_counter()
    if cfg.hf.enabled:
        if dist.is_main:
            prepared = run_prepare(cfg)
            if on_stage:
                on_stage("prepare", prepared)
    else:
        sources = load_sources(cfg)  # every input checked before the run directory exists
        if dist.is_main:
            result = prepare(cfg, sources)
            update_report(Path(cfg.runtime.run_dir), "prepare", result.to_dict())
            if on_stage:
                on_stage("prepare", result.to_dict())
        else:
            _wait_for_prepared(cfg)
    status = "completed"
    for name in _stage_functions(cfg):
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
        Path(cfg.runtime.run_dir), "cycle", {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
    )
    return report
