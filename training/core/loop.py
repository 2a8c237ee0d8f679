"""The framework-free training loop: pretrain, fine-tune, test (engines do the math).

The loop owns everything that must behave the same in every engine: the
warm-up + cosine schedule, the data order, evaluation cadence, metrics,
checkpoints, SIGTERM, NaN stop, early stopping and resume. See
`training/engines/base.py` for the engine side.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.core import checkpoint as ckpt
from training.core.config import ModelConfig, TrainConfig
from training.core.data import ClsEpochSampler, LMSampler, PreparedData, cls_eval_batches, lm_eval_batches
from training.core.metrics import MetricsLog, classification_metrics, flops_per_token, perplexity
from training.core.prepare import resolve_for_data
from training.core.progress import StageProgress, format_record
from training.core.readers import DataError
from training.engines import get_engine
from training.engines.base import DistInfo, Engine, LMBatch, OptimSpec

PRETRAIN_LAST, PRETRAIN_BEST = "last", "best"
# called after every optimizer step with (steps done, engine): custom logging, tests
StepHook = Callable[[int, Engine], None]
FINETUNE_LAST, FINETUNE_BEST = "finetune-last", "finetune-best"


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/inf; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """A checkpoint exists but cannot continue this run (message says why)."""


@dataclass
class StageResult:
    stage: str
    status: str  # completed | early_stopped | preempted | skipped
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to base*min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    low = base * min_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base - low)


class TermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (preemption)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> TermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def open_prepared(cfg: TrainConfig) -> PreparedData:
    """The prepared data of a run, fitted to the config (or a DataError naming the fix)."""
    try:
        data = PreparedData.open(cfg.prepared_path())
    except FileNotFoundError:
        raise DataError(
            f"{cfg.prepared_path()} has no prepared data; "
            "run `envkit train prepare` with the same run_dir first"
        ) from None
    resolve_for_data(cfg, data.meta)
    if data.meta["cls"]["seq_len"] > cfg.model.block_size:
        raise DataError(
            f"prepared sequences are {data.meta['cls']['seq_len']} tokens, longer than the model's "
            f"context block_size={cfg.model.block_size}"
        )
    return data


def make_engine(cfg: TrainConfig, dist: DistInfo) -> Engine:
    return get_engine(cfg.engine)(cfg, dist)


def _model_dict(model: ModelConfig) -> dict[str, Any]:
    return {k: getattr(model, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")}


def _check_resume(path: Path, manifest: dict[str, Any], cfg: TrainConfig, dist: DistInfo, stage: str) -> None:
    if manifest.get("stage") != stage:
        raise ResumeError(f"checkpoint {path} is from stage {manifest.get('stage')!r}, not {stage!r}")
    if manifest.get("world_size") != dist.world_size:
        raise ResumeError(
            f"checkpoint {path} was written by {manifest.get('world_size')} process(es) and this run has "
            f"{dist.world_size}: each rank's data shard and the global batch depend on the world size, so "
            "the run would not continue the same trajectory; resume with the same torchrun --nproc-per-node, "
            "or start a new run_dir (or resume=never)"
        )
    saved = _model_dict(ModelConfig(**manifest["config"]["model"]))
    if saved != _model_dict(cfg.model):
        diff = {k: (saved[k], v) for k, v in _model_dict(cfg.model).items() if saved[k] != v}
        raise ResumeError(
            f"checkpoint {path} has another model shape {diff} (checkpoint, now); "
            "use a new run_dir or resume=never"
        )


class _Stage:
    """Shared plumbing of one stage: engine, log, progress, checkpoint writing."""

    def __init__(self, cfg: TrainConfig, stage: str, dist: DistInfo | None) -> None:
        self.cfg, self.stage = cfg, stage
        self.dist = dist or DistInfo.from_env()
        self.run_dir = Path(cfg.run_dir)
        self.root = ckpt.checkpoint_root(self.run_dir)
        self.data = open_prepared(cfg)
        if self.dist.is_main:
            ckpt.clean_stale(self.root)
        self.engine = make_engine(cfg, self.dist)
        self.log = MetricsLog(self.run_dir, enabled=self.dist.is_main)

    def find_resume(self, name: str) -> tuple[Path | None, dict[str, Any] | None]:
        if self.cfg.resume != "auto":
            return None, None
        path = ckpt.find_checkpoint(self.root, name)
        if path is None:
            return None, None
        manifest = ckpt.read_manifest(path)
        _check_resume(path, manifest, self.cfg, self.dist, self.stage)
        if manifest.get("engine") != self.engine.name:
            raise ResumeError(
                f"checkpoint {path} was written by engine {manifest.get('engine')!r}; its optimizer state "
                f"cannot continue in {self.engine.name!r}; resume with engine={manifest.get('engine')} or "
                "restart the stage with resume=never (weights still move: the next stage and `test` "
                "read them in either engine)"
            )
        return path, manifest

    def save(self, name: str, manifest: dict[str, Any]) -> Path | None:
        """Collective: every rank exports; rank 0 writes the checkpoint atomically."""
        weights = self.engine.export_weights()
        if not self.dist.is_main:
            self.engine.save_state(None)
            self.engine.barrier()
            return None
        full = {
            "engine": self.engine.name,
            "stage": self.stage,
            "config": self.cfg.to_dict(),
            "seeds": {"seed": self.cfg.seed},
            "world_size": self.dist.world_size,
            "pad_id": self.data.pad_id,
            "classes": self.data.classes,
            **manifest,
        }
        path = ckpt.write_checkpoint(self.root, name, weights, full, self.engine.save_state)
        self.engine.barrier()
        return path

    def reduce_mean(self, value: float) -> float:
        if self.dist.world_size == 1:
            return value
        return float(
            self.engine.all_reduce_sum(np.array([value], dtype=np.float64))[0] / self.dist.world_size
        )

    def any_rank(self, flag: bool) -> bool:
        if self.dist.world_size == 1:
            return flag
        return bool(self.engine.all_reduce_sum(np.array([float(flag)]))[0] > 0)

    def close(self) -> None:
        self.log.close()


def _perf_record(stage: _Stage, tokens: int, seconds: float, steps: int, fpt: float) -> dict[str, Any]:
    """Throughput over the last log window; MFU = tokens/s · FLOPs/token / (peak · ranks)."""
    dev = stage.engine.device_info()
    tps = tokens / seconds if seconds > 0 else 0.0
    mfu = None
    if dev.peak_tflops:
        mfu = tps * fpt / (dev.peak_tflops * 1e12 * stage.dist.world_size)
    mem = stage.engine.peak_memory_bytes()
    return {
        "step_ms": seconds * 1000.0 / max(1, steps),
        "tokens_per_s": tps,
        "mfu": mfu,
        "peak_mem_mb": mem / 2**20 if mem else None,
    }


def _lm_eval(stage: _Stage, batches: list[LMBatch]) -> float | None:
    totals = np.zeros(2, dtype=np.float64)
    for b in batches:
        out = stage.engine.eval_step(b)
        totals += (out.loss_sum, out.count)
    totals = stage.engine.all_reduce_sum(totals) if stage.dist.world_size > 1 else totals
    return float(totals[0] / totals[1]) if totals[1] else None


def pretrain(cfg: TrainConfig, dist: DistInfo | None = None, on_step: StepHook | None = None) -> StageResult:
    """Causal-LM pretraining with eval, best/last checkpoints, early stopping and resume."""
    st = _Stage(cfg, "pretrain", dist)
    try:
        return _pretrain(st, on_step)
    finally:
        st.close()


def _pretrain(st: _Stage, on_step: StepHook | None) -> StageResult:
    cfg, eng, dist = st.cfg, st.engine, st.dist
    path, manifest = st.find_resume(PRETRAIN_LAST)
    weights = ckpt.load_weights(path) if path else None
    eng.build("lm", cfg.model, st.data.pad_id, weights, OptimSpec(cfg.weight_decay, cfg.beta1, cfg.beta2))
    start = 0
    best_val, since_best = math.inf, 0
    metrics: dict[str, Any] = {}
    if path and manifest:
        metrics.update(manifest.get("metrics", {}))
        eng.load_state(path)
        start = int(manifest["cursor"]["step"])
        saved_best = manifest.get("best_val_loss")
        best_val = math.inf if saved_best is None else float(saved_best)
        since_best = int(manifest.get("evals_since_best", 0))
        if manifest.get("status") in ("early_stopped",):
            return StageResult("pretrain", "completed", start, manifest.get("metrics", {}), str(path))
    rows = cfg.batch_size * eng.local_replicas  # batch_size is per replica
    sampler = LMSampler(
        st.data.lm_shards("train"), cfg.model.block_size, rows, cfg.seed, dist.rank, dist.world_size
    )
    val_batches = lm_eval_batches(
        st.data.lm_shards("val"),
        cfg.model.block_size,
        rows,
        cfg.eval_batches,
        dist.rank,
        dist.world_size,
    )
    fpt = flops_per_token(cfg.model, eng.num_params())
    tokens_per_step = rows * cfg.grad_accum * cfg.model.block_size * dist.world_size
    # Under fp16 an overflowing step is routine: the grad scaler skips it and backs off.
    grad_overflow_ok = eng.device_info().dtype == "fp16"
    prog = StageProgress("pretrain", cfg.max_steps, start, cfg.progress, dist.is_main)
    if start:
        prog.log(f"pretrain: resumed from {path} at step {start}")
    status, last_path = "completed", str(path) if path else None
    window_t, window_tokens, window_steps = 0.0, 0, 0
    final_step = start

    def cursor_manifest(step: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": step,
            "cursor": {"step": step},
            "best_val_loss": best_val if math.isfinite(best_val) else None,  # strict JSON: no Infinity
            "evals_since_best": since_best,
            "metrics": dict(metrics),
            **extra,
        }

    try:
        with TermFlag() as term:
            for step in range(start, cfg.max_steps):
                lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
                eng.set_lr(lr)
                micro = [sampler.batch(step, k) for k in range(cfg.grad_accum)]
                t0 = time.perf_counter()
                res = eng.train_step(micro, cfg.grad_clip)
                dt = time.perf_counter() - t0
                done = final_step = step + 1
                loss = st.reduce_mean(res.loss)
                if (
                    res.skipped
                    or not math.isfinite(loss)
                    or (not grad_overflow_ok and not math.isfinite(res.grad_norm))
                ):
                    raise TrainingDiverged(
                        f"pretrain: loss became {loss} (grad norm {res.grad_norm}) at step {done}; stopped "
                        f"without saving; the last good checkpoint is {last_path or 'none yet'}; "
                        f"try a lower lr (now {cfg.lr})"
                        + (" or dtype=float32" if eng.device_info().dtype != "float32" else "")
                    )
                if on_step is not None:
                    on_step(done, eng)
                window_t += dt
                window_tokens += tokens_per_step
                window_steps += 1
                if done % cfg.log_every == 0 or done == cfg.max_steps or done == start + 1:
                    rec = {
                        "stage": "pretrain",
                        "step": done,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": res.grad_norm,
                    }
                    rec.update(_perf_record(st, window_tokens, window_t, window_steps, fpt))
                    window_t, window_tokens, window_steps = 0.0, 0, 0
                    st.log.log(rec)
                    prog.log(format_record(rec))
                    metrics.update(final_loss=loss, tokens_per_s=rec["tokens_per_s"], mfu=rec["mfu"])
                stop_early = False
                if val_batches and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                    val = _lm_eval(st, val_batches)
                    if val is not None:
                        metrics.update(val_loss=val, val_ppl=perplexity(val), train_loss=loss)
                        rec = {"stage": "pretrain", "step": done, "val_loss": val, "val_ppl": perplexity(val)}
                        st.log.log(rec)
                        prog.log(format_record(rec))
                        if val < best_val:
                            best_val, since_best = val, 0
                            metrics.update(best_val_loss=val, best_step=done)
                            st.save(PRETRAIN_BEST, cursor_manifest(done, {"status": "best"}))
                        else:
                            since_best += 1
                            stop_early = cfg.patience > 0 and since_best >= cfg.patience
                preempted = st.any_rank(term.raised)
                if stop_early:
                    status = "early_stopped"
                elif preempted:
                    status = "preempted"
                is_end = done == cfg.max_steps or status != "completed"
                if is_end or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                    saved = st.save(PRETRAIN_LAST, cursor_manifest(done, {"status": status}))
                    last_path = str(saved) if saved else last_path
                    if cfg.keep_step_checkpoints and not is_end:
                        st.save(f"step-{done:07d}", cursor_manifest(done, {"status": "step"}))
                prog.advance(done, f"loss {loss:.3f}")
                if status != "completed":
                    prog.log(f"pretrain: {status} at step {done}; checkpoint {last_path}")
                    break
    finally:
        prog.close()
    metrics.update(
        params=eng.num_params(),
        flops_per_token=fpt,
        device=eng.device_info().__dict__,
        world_size=dist.world_size,
    )
    return StageResult("pretrain", status, final_step, metrics, last_path)


def _cls_eval(st: _Stage, ids: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
    batches = cls_eval_batches(ids, labels, batch_size, st.dist.rank, st.dist.world_size, st.data.pad_id)
    preds, golds, loss_sum = [], [], 0.0
    for b in batches:
        out = st.engine.eval_step(b)
        preds.append(np.argmax(out.logits, axis=-1))
        golds.append(b.labels)
        loss_sum += out.loss_sum
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    gold = np.concatenate(golds) if golds else np.zeros(0, np.int64)
    if st.dist.world_size > 1:
        # every rank sums its own confusion counts; the metric is computed from the total
        k = len(st.data.classes)
        conf = np.zeros((k, k), dtype=np.float64)
        np.add.at(conf, (gold, pred), 1)
        conf = st.engine.all_reduce_sum(conf.ravel()).reshape(k, k).astype(np.int64)
        gold = np.repeat(np.arange(k), conf.sum(1))
        pred = np.concatenate([np.repeat(np.arange(k), conf[i]) for i in range(k)])
        loss_sum = float(st.engine.all_reduce_sum(np.array([loss_sum]))[0])
    out = classification_metrics(pred, gold, st.data.classes)
    out["loss"] = loss_sum / max(1, out["n"])
    return out


def finetune(cfg: TrainConfig, dist: DistInfo | None = None, on_step: StepHook | None = None) -> StageResult:
    """Classifier fine-tuning from the pretrained backbone (or init=scratch); keeps the best epoch."""
    st = _Stage(cfg, "finetune", dist)
    try:
        return _finetune(st, on_step)
    finally:
        st.close()


def pretrained_checkpoint(cfg: TrainConfig) -> Path | None:
    root = ckpt.checkpoint_root(cfg.run_dir)
    return ckpt.find_checkpoint(root, PRETRAIN_BEST) or ckpt.find_checkpoint(root, PRETRAIN_LAST)


def _finetune(st: _Stage, on_step: StepHook | None) -> StageResult:
    cfg, eng, dist = st.cfg, st.engine, st.dist
    path, manifest = st.find_resume(FINETUNE_LAST)
    source = None
    if path:
        weights = ckpt.load_weights(path)
        source = manifest.get("init_from") if manifest else None  # where the first run started from
    elif cfg.init == "pretrained":
        pre = pretrained_checkpoint(cfg)
        if pre is None:
            raise DataError(
                f"no pretrained checkpoint in {ckpt.checkpoint_root(cfg.run_dir)}; run `envkit train "
                "pretrain` with this run_dir first, or fine-tune from scratch with init=scratch"
            )
        pre_manifest = ckpt.read_manifest(pre)
        saved = _model_dict(ModelConfig(**pre_manifest["config"]["model"]))
        if saved != _model_dict(cfg.model):
            raise ResumeError(
                f"pretrained checkpoint {pre} has model {saved}, this run asks {_model_dict(cfg.model)}"
            )
        weights = {k: v for k, v in ckpt.load_weights(pre).items() if not k.startswith("cls_head.")}
        source = str(pre)
    else:
        weights = None
    eng.build("cls", cfg.model, st.data.pad_id, weights, OptimSpec(cfg.ft_weight_decay, cfg.beta1, cfg.beta2))
    train_ids, train_labels = st.data.cls_split("train")
    val_ids, val_labels = st.data.cls_split("val")
    ft_rows = cfg.ft_batch_size * eng.local_replicas  # ft_batch_size is per replica
    sampler = ClsEpochSampler(len(train_labels), ft_rows, cfg.seed, dist.rank, dist.world_size)
    bpe = sampler.batches_per_epoch
    if cfg.ft_steps_per_epoch:
        bpe = min(bpe, cfg.ft_steps_per_epoch)  # each epoch still draws a fresh permutation
    total = max(1, cfg.ft_epochs * bpe)
    warmup = int(cfg.ft_warmup_ratio * total)
    epoch0, index0 = 0, 0
    best_acc, best_f1, since_best, best_epoch = -1.0, -1.0, 0, None
    history: list[dict[str, Any]] = []
    if path and manifest:
        eng.load_state(path)
        epoch0, index0 = int(manifest["cursor"]["epoch"]), int(manifest["cursor"]["index"])
        best_acc = float(manifest.get("best_val_accuracy", -1.0))
        best_f1 = float(manifest.get("best_val_f1", -1.0))
        since_best = int(manifest.get("epochs_since_best", 0))
        best_epoch = manifest.get("best_epoch")
        history = list(manifest.get("history", []))
        if manifest.get("status") == "early_stopped":
            epoch0 = cfg.ft_epochs
    prog = StageProgress("finetune", total, epoch0 * bpe + index0, cfg.progress, dist.is_main)
    prog.log(
        f"finetune: init={cfg.init} from {source or 'random weights'}; {len(train_labels)} train rows, "
        f"{bpe} batches/epoch"
    )
    status, last_path = "completed", str(path) if path else None
    fpt = flops_per_token(cfg.model, eng.num_params())
    window_t, window_tokens, window_steps = 0.0, 0, 0

    def state(epoch: int, index: int, step_status: str) -> dict[str, Any]:
        return {
            "step": epoch * bpe + index,
            "cursor": {"epoch": epoch, "index": index},
            "best_val_accuracy": best_acc,
            "best_val_f1": best_f1,
            "epochs_since_best": since_best,
            "best_epoch": best_epoch,
            "history": history,
            "status": step_status,
            "metrics": history[-1] if history else {},
            "init": cfg.init,
            "init_from": source,
        }

    try:
        with TermFlag() as term:
            for epoch in range(epoch0, cfg.ft_epochs):
                for index in range(index0 if epoch == epoch0 else 0, bpe):
                    step = epoch * bpe + index
                    lr = lr_at(step, cfg.ft_lr, warmup, total, cfg.min_lr_ratio)
                    eng.set_lr(lr)
                    batch = sampler.batch(train_ids, train_labels, epoch, index, st.data.pad_id)
                    t0 = time.perf_counter()
                    res = eng.train_step([batch], cfg.grad_clip)
                    window_t += time.perf_counter() - t0
                    window_tokens += batch.tokens * dist.world_size
                    window_steps += 1
                    loss = st.reduce_mean(res.loss)
                    if res.skipped or not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"finetune: loss became {loss} at step {step + 1}; stopped without saving; "
                            "the last "
                            f"good checkpoint is {last_path or 'none'}; try a lower ft_lr (now {cfg.ft_lr})"
                        )
                    if (step + 1) % cfg.log_every == 0:
                        rec = {
                            "stage": "finetune",
                            "step": step + 1,
                            "epoch": epoch + 1,
                            "loss": loss,
                            "lr": lr,
                            "grad_norm": res.grad_norm,
                        }
                        rec.update(_perf_record(st, window_tokens, window_t, window_steps, fpt))
                        window_t, window_tokens, window_steps = 0.0, 0, 0
                        st.log.log(rec)
                        prog.log(format_record(rec))
                    prog.advance(step + 1, f"loss {loss:.3f}")
                    if on_step is not None:
                        on_step(step + 1, eng)
                    if st.any_rank(term.raised) and index + 1 < bpe:
                        status = "preempted"
                        last_path = str(st.save(FINETUNE_LAST, state(epoch, index + 1, status)))
                        prog.log(f"finetune: preempted at step {step + 1}; checkpoint {last_path}")
                        break
                if status == "preempted":
                    break
                val = _cls_eval(st, val_ids, val_labels, cfg.ft_batch_size * 2)
                rec = {
                    "stage": "finetune",
                    "step": (epoch + 1) * bpe,
                    "epoch": epoch + 1,
                    "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"],
                    "val_f1": val["f1"],
                }
                history.append({k: rec[k] for k in ("epoch", "val_loss", "val_accuracy", "val_f1")})
                st.log.log(rec)
                prog.log(format_record(rec))
                if val["accuracy"] > best_acc:
                    best_acc, best_f1, since_best, best_epoch = val["accuracy"], val["f1"], 0, epoch + 1
                    st.save(FINETUNE_BEST, state(epoch + 1, 0, "best"))
                else:
                    since_best += 1
                if cfg.ft_patience and since_best >= cfg.ft_patience and epoch + 1 < cfg.ft_epochs:
                    status = "early_stopped"
                preempted = st.any_rank(term.raised)
                last_path = str(st.save(FINETUNE_LAST, state(epoch + 1, 0, status)))
                if status == "early_stopped":
                    prog.log(f"finetune: early stop after epoch {epoch + 1} (best epoch {best_epoch})")
                    break
                if preempted and epoch + 1 < cfg.ft_epochs:
                    status = "preempted"
                    prog.log(f"finetune: preempted after epoch {epoch + 1}; checkpoint {last_path}")
                    break
    finally:
        prog.close()
    metrics = {
        "best_val_accuracy": best_acc,
        "best_val_f1": best_f1,
        "best_epoch": best_epoch,
        "history": history,
        "init": cfg.init,
        "init_from": source,
    }
    return StageResult("finetune", status, cfg.ft_epochs * bpe, metrics, last_path)


def test(cfg: TrainConfig, dist: DistInfo | None = None) -> StageResult:
    """Test-split classification scores and held-out perplexity of the pretrained model."""
    st = _Stage(cfg, "test", dist)
    try:
        metrics: dict[str, Any] = {}
        root = st.root
        cls_path = ckpt.find_checkpoint(root, FINETUNE_BEST) or ckpt.find_checkpoint(root, FINETUNE_LAST)
        if cls_path is None and not (pretrained_checkpoint(cfg)):
            raise DataError(f"no checkpoint in {root}; run `envkit train pretrain` or `finetune` first")
        if cls_path is not None:
            st.engine.build("cls", cfg.model, st.data.pad_id, ckpt.load_weights(cls_path), OptimSpec(0.0))
            ids, labels = st.data.cls_split("test")
            metrics["classification"] = _cls_eval(st, ids, labels, cfg.ft_batch_size * 2)
            metrics["classification"]["checkpoint"] = str(cls_path)
        lm_path = pretrained_checkpoint(cfg)
        if lm_path is not None:
            st.engine.build("lm", cfg.model, st.data.pad_id, ckpt.load_weights(lm_path), OptimSpec(0.0))
            batches = lm_eval_batches(
                st.data.lm_shards("test"),
                cfg.model.block_size,
                cfg.batch_size,
                max(cfg.eval_batches, 32),
                st.dist.rank,
                st.dist.world_size,
            )
            loss = _lm_eval(st, batches)
            if loss is not None:
                metrics["lm"] = {"test_loss": loss, "test_ppl": perplexity(loss), "checkpoint": str(lm_path)}
        if "classification" in metrics:
            c = metrics["classification"]
            st.log.log(
                {
                    "stage": "test",
                    "step": 0,
                    "accuracy": c["accuracy"],
                    "f1": c["f1"],
                    "precision": c["precision"],
                    "recall": c["recall"],
                }
            )
        return StageResult("test", "completed", 0, metrics, str(cls_path) if cls_path else None)
    finally:
        st.close()
