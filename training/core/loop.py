"""The stages a user runs: pretrain, finetune, test (framework-free; engines do the math).

`pretrain` and `finetune` are the two task configurations (`training.core.tasks`)
of the one stage loop (`training.core.stage.run_stage`); `test` scores the
checkpoints they leave. See `training/engines/base.py` for the engine side.
"""

from __future__ import annotations

from typing import Any

from training.core.config import TrainConfig
from training.core.data import lm_eval_batches
from training.core.metrics import perplexity
from training.core.readers import DataError
from training.core.stage import (
    ResumeError,
    StageResult,
    StepHook,
    TermFlag,
    TrainingDiverged,
    open_stage,
    run_stage,
)
from training.core.tasks import (
    FINETUNE_BEST,
    FINETUNE_LAST,
    ClassifierTask,
    LanguageModelTask,
    cls_eval,
    lm_eval,
    lr_at,
    pretrained_checkpoint,
)
from training.engines.base import DistInfo, OptimSpec

__all__ = [
    "ResumeError",
    "StageResult",
    "TermFlag",
    "TrainingDiverged",
    "finetune",
    "lr_at",
    "pretrain",
    "pretrained_checkpoint",
    "test",
]


def pretrain(cfg: TrainConfig, dist: DistInfo | None = None, on_step: StepHook | None = None) -> StageResult:
    """Causal-LM pretraining with eval, best/last checkpoints, early stopping and resume."""
    ctx = open_stage(cfg, "pretrain", dist)
    try:
        return run_stage(LanguageModelTask(cfg), ctx, on_step)
    finally:
        ctx.log.close()


def finetune(cfg: TrainConfig, dist: DistInfo | None = None, on_step: StepHook | None = None) -> StageResult:
    """Classifier fine-tuning from the pretrained backbone (or init=scratch); keeps the best epoch."""
    ctx = open_stage(cfg, "finetune", dist)
    try:
        return run_stage(ClassifierTask(cfg), ctx, on_step)
    finally:
        ctx.log.close()


def test(cfg: TrainConfig, dist: DistInfo | None = None) -> StageResult:
    """Test-split classification scores and held-out perplexity of the pretrained model."""
    ctx = open_stage(cfg, "test", dist)
    try:
        metrics: dict[str, Any] = {}
        cls_path = ctx.checkpoints.find(FINETUNE_BEST) or ctx.checkpoints.find(FINETUNE_LAST)
        lm_path = pretrained_checkpoint(cfg)
        if cls_path is None and lm_path is None:
            raise DataError(
                f"no checkpoint in {ctx.checkpoints.root}; run `envkit train pretrain` or `finetune` first"
            )
        if cls_path is not None:
            from training.core.checkpoint import load_weights

            ctx.engine.build("cls", cfg.model, ctx.data.pad_id, load_weights(cls_path), OptimSpec(0.0))
            ids, labels = ctx.data.cls_split("test")
            metrics["classification"] = cls_eval(ctx, ids, labels, cfg.finetune.batch_size * 2)
            metrics["classification"]["checkpoint"] = str(cls_path)
        if lm_path is not None:
            from training.core.checkpoint import load_weights

            ctx.engine.build("lm", cfg.model, ctx.data.pad_id, load_weights(lm_path), OptimSpec(0.0))
            batches = lm_eval_batches(
                ctx.data.lm_shards("test"),
                cfg.model.block_size,
                cfg.pretrain.batch_size,
                max(cfg.pretrain.eval_batches, 32),
                ctx.dist.rank,
                ctx.dist.world_size,
            )
            loss = lm_eval(ctx, batches)
            if loss is not None:
                metrics["lm"] = {"test_loss": loss, "test_ppl": perplexity(loss), "checkpoint": str(lm_path)}
        if "classification" in metrics:
            c = metrics["classification"]
            ctx.log.log(
                {
                    "stage": "test",
                    "step": 0,
                    **{k: c[k] for k in ("accuracy", "f1", "precision", "recall")},
                }
            )
        return StageResult("test", "completed", 0, metrics, str(cls_path) if cls_path else None)
    finally:
        ctx.log.close()
