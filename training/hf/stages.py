"""Fine-tuning a pretrained Hugging Face model as task configurations of the one stage loop.

`HFClassifierTask` and `HFCausalLMTask` are `training.core.tasks`' classifier and
language-model tasks with a transformers model: the same samplers, evaluation,
checkpoints (`finetune-last`, `finetune-best`), resume, SIGTERM and early stopping.
What differs is the data (the same readers' rows, tokenized by the model's own
tokenizer: `HFData`), what the engine builds (`HFTorchEngine`), the learning rate
(`hf.lr`) and the FLOPs count. At the end of the stage the best checkpoint is also
written with `save_pretrained` to `run_dir/hf/` (full model, or adapter + merged).

Causal LM fine-tuning (`hf.task=causal_lm`) reads the corpus (`corpus=`) and is
step-indexed like pretraining: it uses the pretrain keys (max_steps, batch_size,
grad_accum, warmup_steps, eval_every, checkpoint_every) with `hf.max_len` windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.core import checkpoint as ckpt
from training.core.config import ConfigError, TrainConfig, save_config
from training.core.data import LMSampler, lm_eval_batches
from training.core.metrics import MetricsLog, perplexity
from training.core.prepare import load_sources
from training.core.readers import DataError
from training.core.stage import (
    CheckpointManager,
    Resume,
    ResumeError,
    StageContext,
    StageResult,
    StepHook,
    Work,
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
)
from training.engines.base import Batch, ClsBatch, DistInfo, OptimSpec
from training.hf.collate import PAD, encode_corpus, encode_rows

HF_DIR = "hf"  # run_dir/hf/: save_pretrained output (model | adapter + merged)
TF_REFUSAL = (
    "engine=tensorflow cannot fine-tune pretrained=: transformers 5 removed its TensorFlow models, so "
    "the checkpoint has no TensorFlow implementation to load into; use engine=pytorch (the default), or "
    "in TensorFlow load the checkpoint with keras-hub (keras_hub.models.BertTextClassifier.from_preset("
    "'hf://OWNER/NAME'), which converts BERT, DistilBERT, GPT-2, Llama and other checkpoints)"
)


def check_supported(cfg: TrainConfig) -> None:
    """Refuse what the pretrained path cannot do, before anything is written."""
    if cfg.runtime.engine == "tensorflow":
        raise ConfigError(TF_REFUSAL)


@dataclass
class HFData:
    """The run's rows tokenized by the pretrained model's tokenizer (the `ctx.data` of an HF stage)."""

    classes: list[str]
    cls: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    lm: dict[str, np.ndarray] = field(default_factory=dict)
    pad_id: int = PAD
    names: dict[str, Any] = field(default_factory=dict)

    def cls_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return self.cls[split]

    def lm_shards(self, split: str) -> list[np.ndarray]:
        ids = self.lm.get(split)
        return [ids] if ids is not None and len(ids) else []


def build_data(cfg: TrainConfig, tokenizer: Any) -> HFData:
    """Read the labelled set (and corpus) with the project's readers and splits; tokenize for the model."""
    src = load_sources(cfg)  # the same readers, splits and bad-input errors as `prepare`
    data = HFData(list(src.classes), names=src.names)
    if cfg.hf.resolved_task == "classification":
        for split, (texts, labels) in src.cls.items():
            data.cls[split] = (
                encode_rows(tokenizer, texts, cfg.hf.max_len),
                np.asarray(labels, dtype=np.int64),
            )
    else:
        for split, docs in src.lm.items():
            data.lm[split] = encode_corpus(tokenizer, docs)
        if len(data.lm["train"]) < cfg.hf.max_len + 2:
            raise DataError(
                f"corpus {cfg.data.corpus} gives {len(data.lm['train'])} training tokens, fewer than "
                f"hf.max_len+2={cfg.hf.max_len + 2}; add text or lower hf.max_len"
            )
    return data


def open_hf_stage(cfg: TrainConfig, stage: str, dist: DistInfo | None = None) -> StageContext:
    """The stage context of an HF run: HFTorchEngine, HFData, the checkpoint manager and metrics log."""
    from training.hf.engine import HFTorchEngine

    check_supported(cfg)
    dist = dist or DistInfo.from_env()
    engine = HFTorchEngine(cfg, dist)
    data = build_data(cfg, engine.tokenizer)
    cfg.model.n_classes = len(data.classes)
    manager = CheckpointManager(cfg, stage, engine, dist, {"pad_id": PAD, "classes": data.classes})
    log = MetricsLog(Path(cfg.runtime.run_dir), enabled=dist.is_main)
    return StageContext(cfg, dist, engine, data, manager, log)  # type: ignore[arg-type]


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    hf = cfg.hf
    return {"pretrained": hf.model, "hf_task": hf.resolved_task, "hf_mode": hf.mode}


def _check_same_model(cfg: TrainConfig, resume: Resume | None) -> None:
    if resume is None:
        return
    saved = {k: resume.manifest.get(k) for k in _identity(cfg)}
    if saved != _identity(cfg):
        raise ResumeError(
            f"checkpoint {resume.path} fine-tunes {saved} and this run asks {_identity(cfg)}; "
            "use a new run_dir or resume=never"
        )


def _matmul_params(ctx: StageContext) -> int:
    """Parameters a token passes through as matmuls (the embedding lookup is not one)."""
    module = ctx.engine.raw.model  # type: ignore[attr-defined]
    total = sum(p.numel() for p in module.parameters())
    return total - module.get_input_embeddings().weight.numel()


def _train_flops_factor(cfg: TrainConfig) -> float:
    # forward 2N; backward 4N when every weight gets a gradient, ~2N with LoRA (activation grads only)
    return 6.0 if cfg.hf.mode == "full" else 4.0


class HFClassifierTask(ClassifierTask):
    """Sequence classification with a pretrained encoder/decoder (full or LoRA)."""

    lr_key = "hf.lr"

    def setup(self, ctx: StageContext, resume: Resume | None) -> str:
        cfg, f, eng, dist = self.cfg, self.f, ctx.engine, ctx.dist
        _check_same_model(cfg, resume)
        self.source = cfg.hf.model
        weights = resume.weights() if resume else None
        eng.build("cls", cfg.model, PAD, weights, OptimSpec(f.weight_decay, cfg.optim.beta1, cfg.optim.beta2))
        from training.core.data import ClsEpochSampler

        self.train_ids, self.train_labels = ctx.data.cls_split("train")
        self.val_ids, self.val_labels = ctx.data.cls_split("val")
        rows = f.batch_size * eng.local_replicas
        self.sampler = ClsEpochSampler(
            len(self.train_labels), rows, cfg.runtime.seed, dist.rank, dist.world_size
        )
        bpe = self.sampler.batches_per_epoch
        self.bpe = min(bpe, f.steps_per_epoch) if f.steps_per_epoch else bpe
        self.total_steps = f.epochs * self.bpe
        self.schedule_total = max(1, self.total_steps)
        self.warmup = int(f.warmup_ratio * self.schedule_total)
        self.pad_id = PAD
        self.world_size = dist.world_size
        self.matmul_params = _matmul_params(ctx)
        self.flops_factor = _train_flops_factor(cfg)
        info = eng.raw.model  # type: ignore[attr-defined]
        trainable = eng.num_params()
        return (
            f"finetune: {cfg.hf.mode} fine-tuning of {cfg.hf.model} ({type(info).__name__}, "
            f"{trainable:,} trainable parameters); {len(self.train_labels)} train rows, "
            f"{self.bpe} batches/epoch"
        )

    def lr(self, step: int) -> float:
        return lr_at(
            step, self.cfg.hf.learning_rate, self.warmup, self.schedule_total, self.cfg.optim.min_lr_ratio
        )

    def work(self, batches: list[Batch]) -> Work:
        tokens = 0
        for b in batches:
            assert isinstance(b, ClsBatch)
            tokens += int((np.asarray(b.ids) != PAD).sum())
        # attention's n^2 term is left out: short rows, and it differs per architecture
        flops = self.flops_factor * self.matmul_params * tokens
        return Work(tokens * self.world_size, flops * self.world_size)

    def manifest_extra(self, state: Any) -> dict[str, Any]:
        return {"init": "pretrained", "init_from": self.source, **_identity(self.cfg)}

    def result_metrics(self, ctx: StageContext, state: Any) -> dict[str, Any]:
        out = super().result_metrics(ctx, state)
        out.update(init="hf", **_identity(self.cfg), trainable_params=ctx.engine.num_params())
        return out


class HFCausalLMTask(LanguageModelTask):
    """Causal-LM fine-tuning of a pretrained decoder on the corpus (full or LoRA)."""

    stage = "finetune"
    last_name, best_name = FINETUNE_LAST, FINETUNE_BEST
    lr_key = "hf.lr"

    def setup(self, ctx: StageContext, resume: Resume | None) -> str:
        cfg, p, eng, dist = self.cfg, self.p, ctx.engine, ctx.dist
        _check_same_model(cfg, resume)
        weights = resume.weights() if resume else None
        eng.build("lm", cfg.model, PAD, weights, OptimSpec(p.weight_decay, cfg.optim.beta1, cfg.optim.beta2))
        rows = p.batch_size * eng.local_replicas
        block = cfg.hf.max_len
        self.sampler = LMSampler(
            ctx.data.lm_shards("train"), block, rows, cfg.runtime.seed, dist.rank, dist.world_size
        )
        self.val_batches = lm_eval_batches(
            ctx.data.lm_shards("val"), block, rows, p.eval_batches, dist.rank, dist.world_size
        )
        self.params = eng.num_params()
        self.fpt = _train_flops_factor(cfg) * _matmul_params(ctx)
        self.tokens_per_step = rows * p.grad_accum * block * dist.world_size
        self.engine = eng
        return (
            f"finetune: {cfg.hf.mode} causal-LM fine-tuning of {cfg.hf.model} "
            f"({self.params:,} trainable parameters)"
        )

    def lr(self, step: int) -> float:
        return lr_at(
            step,
            self.cfg.hf.learning_rate,
            self.p.warmup_steps,
            self.p.max_steps,
            self.cfg.optim.min_lr_ratio,
        )

    def manifest_extra(self, state: Any) -> dict[str, Any]:
        return _identity(self.cfg)

    def result_metrics(self, ctx: StageContext, state: Any) -> dict[str, Any]:
        out = {**state.metrics, **_identity(self.cfg), "trainable_params": ctx.engine.num_params()}
        out["device"] = ctx.engine.device_info().__dict__
        out["world_size"] = ctx.dist.world_size
        return out


def _task(cfg: TrainConfig) -> ClassifierTask | LanguageModelTask:
    return HFClassifierTask(cfg) if cfg.hf.resolved_task == "classification" else HFCausalLMTask(cfg)


def export_pretrained(ctx: StageContext, checkpoint: Path) -> dict[str, str]:
    """`save_pretrained` the weights of `checkpoint` into run_dir/hf (rank 0; a plain, unsharded copy)."""
    from training.hf.module import build_module, save_for_transformers

    cfg, eng = ctx.cfg, ctx.engine
    module, tokenizer = build_module(cfg.hf, cfg.model.n_classes, "cpu", eng.source, eng.tokenizer)  # type: ignore[attr-defined]
    module.load_trainable_state(ckpt.load_weights(checkpoint))
    return save_for_transformers(module, tokenizer, Path(cfg.runtime.run_dir) / HF_DIR, merge=cfg.hf.merge)


def finetune(cfg: TrainConfig, dist: DistInfo | None = None, on_step: StepHook | None = None) -> StageResult:
    """Fine-tune `cfg.hf.model`; on completion also save the best checkpoint with save_pretrained."""
    ctx = open_hf_stage(cfg, "finetune", dist)
    try:
        result = run_stage(_task(cfg), ctx, on_step)
        if result.status != "preempted" and ctx.dist.is_main:
            best = ctx.checkpoints.find(FINETUNE_BEST) or ctx.checkpoints.find(FINETUNE_LAST)
            if best is not None:
                t0 = time.perf_counter()
                result.metrics["saved"] = export_pretrained(ctx, best)
                result.metrics["saved_from"] = str(best)
                result.metrics["save_seconds"] = round(time.perf_counter() - t0, 2)
        return result
    finally:
        ctx.log.close()


def test(cfg: TrainConfig, dist: DistInfo | None = None) -> StageResult:
    """Score the best fine-tuned checkpoint on the test split (classification) or its text (causal LM)."""
    ctx = open_hf_stage(cfg, "test", dist)
    try:
        path = ctx.checkpoints.find(FINETUNE_BEST) or ctx.checkpoints.find(FINETUNE_LAST)
        if path is None:
            raise DataError(
                f"no fine-tuned checkpoint in {ctx.checkpoints.root}; run `envkit train finetune` first"
            )
        task = cfg.hf.resolved_task
        ctx.engine.build(
            "cls" if task == "classification" else "lm",
            cfg.model,
            PAD,
            ckpt.load_weights(path),
            OptimSpec(0.0),
        )
        metrics: dict[str, Any] = {}
        if task == "classification":
            ids, labels = ctx.data.cls_split("test")
            c = cls_eval(ctx, ids, labels, cfg.finetune.batch_size * 2)
            c["checkpoint"] = str(path)
            metrics["classification"] = c
            ctx.log.log(
                {"stage": "test", "step": 0, **{k: c[k] for k in ("accuracy", "f1", "precision", "recall")}}
            )
        else:
            p = cfg.pretrain
            batches = lm_eval_batches(
                ctx.data.lm_shards("test"), cfg.hf.max_len, p.batch_size, max(p.eval_batches, 32),
                ctx.dist.rank, ctx.dist.world_size,
            )  # fmt: skip
            loss = lm_eval(ctx, batches)
            if loss is not None:
                metrics["lm"] = {"test_loss": loss, "test_ppl": perplexity(loss), "checkpoint": str(path)}
        metrics.update(_identity(cfg))
        return StageResult("test", "completed", 0, metrics, str(path))
    finally:
        ctx.log.close()


def prepare(cfg: TrainConfig) -> dict[str, Any]:
    """Check every input and the model, tokenize once, save config.json (nothing else to prepare)."""
    from training.hf.loading import load_tokenizer
    from training.hf.source import resolve_source

    check_supported(cfg)
    t0 = time.perf_counter()
    source = resolve_source(cfg.hf.model)
    tokenizer = load_tokenizer(source)
    data = build_data(cfg, tokenizer)
    cfg.model.n_classes = len(data.classes)
    save_config(cfg, Path(cfg.runtime.run_dir) / "config.json")
    return {
        "prepared_dir": "",
        "tokenizer": f"{type(tokenizer).__name__} of {cfg.hf.model}",
        "vocab_size": len(tokenizer),
        "classes": data.classes,
        "lm_tokens": {s: len(v) for s, v in data.lm.items()} or {"train": 0, "val": 0, "test": 0},
        "cls_rows": {s: len(v[1]) for s, v in data.cls.items()} or {"train": 0, "val": 0, "test": 0},
        "seconds": round(time.perf_counter() - t0, 2),
        "pretrained": cfg.hf.model,
    }


STAGES = {"finetune": finetune, "test": test}
