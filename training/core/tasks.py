"""The two task configurations of the stage loop: causal-LM pretraining and classification.

Each class implements `training.core.stage.StageTask`: what to build, which batches a
step draws, what a step computes (tokens, FLOPs), when to evaluate and checkpoint,
and how to score. Everything else (the loop, state, checkpoints, preemption,
divergence, early stopping, throughput) is `training.core.stage`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.core import checkpoint as ckpt
from training.core.config import TrainConfig
from training.core.data import ClsEpochSampler, LMSampler, cls_eval_batches, lm_eval_batches
from training.core.metrics import classification_metrics, classifier_step_flops, flops_per_token, perplexity
from training.core.readers import DataError
from training.core.stage import Evaluation, Resume, ResumeError, StageContext, TrainState, Work, model_shape
from training.engines.base import Batch, ClsBatch, LMBatch, OptimSpec

PRETRAIN_LAST, PRETRAIN_BEST = "last", "best"
FINETUNE_LAST, FINETUNE_BEST = "finetune-last", "finetune-best"


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to base*min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    low = base * min_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base - low)


def lm_eval(ctx: StageContext, batches: list[LMBatch]) -> float | None:
    """Mean next-token loss over `batches` (summed over ranks)."""
    totals = np.zeros(2, dtype=np.float64)
    for b in batches:
        out = ctx.engine.eval_step(b)
        totals += (out.loss_sum, out.count)
    totals = ctx.engine.all_reduce_sum(totals) if ctx.dist.world_size > 1 else totals
    return float(totals[0] / totals[1]) if totals[1] else None


def cls_eval(ctx: StageContext, ids: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Classification metrics over a split (confusion counts summed over ranks)."""
    batches = cls_eval_batches(ids, labels, batch_size, ctx.dist.rank, ctx.dist.world_size, ctx.data.pad_id)
    preds, golds, loss_sum = [], [], 0.0
    for b in batches:
        out = ctx.engine.eval_step(b)
        preds.append(np.argmax(out.logits, axis=-1))
        golds.append(b.labels)
        loss_sum += out.loss_sum
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    gold = np.concatenate(golds) if golds else np.zeros(0, np.int64)
    if ctx.dist.world_size > 1:
        # every rank sums its own confusion counts; the metric is computed from the total
        k = len(ctx.data.classes)
        conf = np.zeros((k, k), dtype=np.float64)
        np.add.at(conf, (gold, pred), 1)
        conf = ctx.engine.all_reduce_sum(conf.ravel()).reshape(k, k).astype(np.int64)
        gold = np.repeat(np.arange(k), conf.sum(1))
        pred = np.concatenate([np.repeat(np.arange(k), conf[i]) for i in range(k)])
        loss_sum = float(ctx.engine.all_reduce_sum(np.array([loss_sum]))[0])
    out = classification_metrics(pred, gold, ctx.data.classes)
    out["loss"] = loss_sum / max(1, out["n"])
    return out


def pretrained_checkpoint(cfg: TrainConfig) -> Path | None:
    """The backbone fine-tuning starts from: pretraining's best, else its last."""
    root = ckpt.checkpoint_root(cfg.runtime.run_dir)
    return ckpt.find_checkpoint(root, PRETRAIN_BEST) or ckpt.find_checkpoint(root, PRETRAIN_LAST)


class LanguageModelTask:
    """Causal-LM pretraining: step-indexed batches, eval every `eval_every`, best = lowest val loss."""

    stage = "pretrain"
    last_name, best_name = PRETRAIN_LAST, PRETRAIN_BEST
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    lr_key = "pretrain.lr"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.p = cfg, cfg.pretrain
        self.patience = self.p.patience
        self.keep_step_checkpoints = self.p.keep_step_checkpoints
        self.total_steps = self.p.max_steps

    def setup(self, ctx: StageContext, resume: Resume | None) -> str:
        cfg, p, eng, dist = self.cfg, self.p, ctx.engine, ctx.dist
        weights = resume.weights() if resume else None
        eng.build(
            "lm",
            cfg.model,
            ctx.data.pad_id,
            weights,
            OptimSpec(p.weight_decay, cfg.optim.beta1, cfg.optim.beta2),
        )
        rows = p.batch_size * eng.local_replicas  # batch_size is per replica
        block = cfg.model.block_size
        self.sampler = LMSampler(
            ctx.data.lm_shards("train"), block, rows, cfg.runtime.seed, dist.rank, dist.world_size
        )
        self.val_batches = lm_eval_batches(
            ctx.data.lm_shards("val"), block, rows, p.eval_batches, dist.rank, dist.world_size
        )
        self.params = eng.num_params()
        self.fpt = flops_per_token(cfg.model, self.params)
        self.tokens_per_step = rows * p.grad_accum * block * dist.world_size
        self.engine = eng
        return ""

    def cursor(self, step: int) -> dict[str, int]:
        return {"step": step}

    def step_of(self, cursor: dict[str, Any]) -> int:
        return int(cursor["step"])

    def lr(self, step: int) -> float:
        return lr_at(step, self.p.lr, self.p.warmup_steps, self.p.max_steps, self.cfg.optim.min_lr_ratio)

    def batches(self, step: int) -> list[Batch]:
        return [self.sampler.batch(step, k) for k in range(self.p.grad_accum)]

    def work(self, batches: list[Batch]) -> Work:
        # every position of an LM batch is a real token
        return Work(self.tokens_per_step, self.tokens_per_step * self.fpt)

    def log_due(self, done: int, start: int) -> bool:
        return done % self.p.log_every == 0 or done == self.p.max_steps or done == start + 1

    def record_fields(self, done: int) -> dict[str, Any]:
        return {}

    def eval_due(self, done: int) -> bool:
        return bool(self.val_batches) and (done % self.p.eval_every == 0 or done == self.p.max_steps)

    def evaluate(self, ctx: StageContext, state: TrainState, done: int, loss: float) -> Evaluation | None:
        val = lm_eval(ctx, self.val_batches)
        if val is None:
            return None
        state.metrics.update(val_loss=val, val_ppl=perplexity(val), train_loss=loss)
        return Evaluation(val, {"val_loss": val, "val_ppl": perplexity(val)})

    def checkpoint_due(self, done: int) -> bool:
        return bool(self.p.checkpoint_every) and done % self.p.checkpoint_every == 0

    def manifest_extra(self, state: TrainState) -> dict[str, Any]:
        return {}

    def result_metrics(self, ctx: StageContext, state: TrainState) -> dict[str, Any]:
        return {
            **state.metrics,
            "params": ctx.engine.num_params(),
            "flops_per_token": flops_per_token(self.cfg.model, ctx.engine.num_params()),
            "device": ctx.engine.device_info().__dict__,
            "world_size": ctx.dist.world_size,
        }


class ClassifierTask:
    """Fine-tuning a classifier: epochs of a fresh permutation, eval each epoch, best = accuracy."""

    stage = "finetune"
    last_name, best_name = FINETUNE_LAST, FINETUNE_BEST
    metric: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    lr_key = "finetune.lr"
    keep_step_checkpoints = False

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.f = cfg, cfg.finetune
        self.patience = self.f.patience
        self.total_steps = 0
        self.source: str | None = None

    def _initial_weights(self, resume: Resume | None) -> dict[str, np.ndarray] | None:
        cfg = self.cfg
        if resume is not None:
            self.source = resume.manifest.get("init_from")  # where the first run started from
            return resume.weights()
        if self.f.init != "pretrained":
            return None
        pre = pretrained_checkpoint(cfg)
        if pre is None:
            raise DataError(
                f"no pretrained checkpoint in {ckpt.checkpoint_root(cfg.runtime.run_dir)}; run `envkit train "
                "pretrain` with this run_dir first, or fine-tune from scratch with init=scratch"
            )
        saved = model_shape(ckpt.read_manifest(pre)["config"]["model"])
        if saved != model_shape(cfg.model):
            raise ResumeError(
                f"pretrained checkpoint {pre} has model {saved}, this run asks {model_shape(cfg.model)}"
            )
        self.source = str(pre)
        return {k: v for k, v in ckpt.load_weights(pre).items() if not k.startswith("cls_head.")}

    def setup(self, ctx: StageContext, resume: Resume | None) -> str:
        cfg, f, eng, dist = self.cfg, self.f, ctx.engine, ctx.dist
        weights = self._initial_weights(resume)
        eng.build(
            "cls",
            cfg.model,
            ctx.data.pad_id,
            weights,
            OptimSpec(f.weight_decay, cfg.optim.beta1, cfg.optim.beta2),
        )
        self.train_ids, self.train_labels = ctx.data.cls_split("train")
        self.val_ids, self.val_labels = ctx.data.cls_split("val")
        rows = f.batch_size * eng.local_replicas  # batch_size is per replica
        self.sampler = ClsEpochSampler(
            len(self.train_labels), rows, cfg.runtime.seed, dist.rank, dist.world_size
        )
        bpe = self.sampler.batches_per_epoch
        if f.steps_per_epoch:
            bpe = min(bpe, f.steps_per_epoch)  # each epoch still draws a fresh permutation
        self.bpe = bpe
        self.total_steps = f.epochs * bpe
        self.schedule_total = max(1, self.total_steps)
        self.warmup = int(f.warmup_ratio * self.schedule_total)
        self.pad_id = ctx.data.pad_id
        self.world_size = dist.world_size
        # the classifier never runs the tied LM head; the token embedding is a lookup, not a matmul
        self.matmul_params = eng.num_params() - cfg.model.vocab_size * cfg.model.n_embd
        return (
            f"finetune: init={f.init} from {self.source or 'random weights'}; {len(self.train_labels)} "
            f"train rows, {bpe} batches/epoch"
        )

    def cursor(self, step: int) -> dict[str, int]:
        epoch, index = divmod(step, self.bpe) if self.bpe else (0, 0)
        return {"epoch": epoch, "index": index}

    def step_of(self, cursor: dict[str, Any]) -> int:
        return min(self.total_steps, int(cursor["epoch"]) * self.bpe + int(cursor["index"]))

    def lr(self, step: int) -> float:
        return lr_at(step, self.f.lr, self.warmup, self.schedule_total, self.cfg.optim.min_lr_ratio)

    def batches(self, step: int) -> list[Batch]:
        epoch, index = divmod(step, self.bpe)
        return [self.sampler.batch(self.train_ids, self.train_labels, epoch, index, self.pad_id)]

    def work(self, batches: list[Batch]) -> Work:
        tokens, flops = 0, 0.0
        for b in batches:
            assert isinstance(b, ClsBatch)
            n, f = classifier_step_flops(self.cfg.model, self.matmul_params, b.ids, self.pad_id)
            tokens, flops = tokens + n, flops + f
        # each rank draws its own rows of the same shape; the global figure scales by the ranks
        return Work(tokens * self.world_size, flops * self.world_size)

    def log_due(self, done: int, start: int) -> bool:
        return done % self.cfg.pretrain.log_every == 0

    def record_fields(self, done: int) -> dict[str, Any]:
        return {"epoch": (done - 1) // self.bpe + 1}

    def eval_due(self, done: int) -> bool:
        return done % self.bpe == 0

    def evaluate(self, ctx: StageContext, state: TrainState, done: int, loss: float) -> Evaluation | None:
        val = cls_eval(ctx, self.val_ids, self.val_labels, self.f.batch_size * 2)
        rec = {
            "epoch": done // self.bpe,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_f1": val["f1"],
        }
        state.history.append(dict(rec))
        state.metrics.update(rec)
        return Evaluation(val["accuracy"], rec)

    def checkpoint_due(self, done: int) -> bool:
        return done % self.bpe == 0  # every epoch's end

    def manifest_extra(self, state: TrainState) -> dict[str, Any]:
        return {"init": self.f.init, "init_from": self.source}

    def result_metrics(self, ctx: StageContext, state: TrainState) -> dict[str, Any]:
        best = state.best_record
        return {
            "best_val_accuracy": state.best_value if state.best_value is not None else -1.0,
            "best_val_f1": best.get("val_f1", -1.0),
            "best_epoch": best.get("epoch"),
            "history": state.history,
            "init": self.f.init,
            "init_from": self.source,
            "tokens_per_s": state.metrics.get("tokens_per_s"),
            "mfu": state.metrics.get("mfu"),
            "skipped_steps": state.skipped_steps,
        }
