"""One stage loop for every task: a TrainState, task hooks, a checkpoint manager.

Pretraining (causal LM), fine-tuning (classification) and any later task (the
Hugging Face fine-tuning of issue 16) are *task configurations* of the same
loop, `run_stage(task, ctx)`. The loop owns, once:

- the step loop and its data cursor (a task maps a global step to its batches);
- the throughput window (tokens/s, step time, MFU from the FLOPs the task reports);
- divergence (non-finite loss or gradients: stop without saving, name the fix);
- fp16 steps the grad scaler skipped (counted and logged as skipped, not an error);
- evaluation cadence, best-metric tracking and patience (early stopping);
- preemption: SIGTERM sets a flag; after the current step the loop saves `last`
  and returns status `preempted` (every rank agrees through an all-reduce);
- checkpoints through a `CheckpointManager` (last / best / step-N, the manifest,
  and the checks that decide whether a checkpoint may continue this run).

How a task plugs in
-------------------
A task is an object with the attributes and methods of `StageTask` (a Protocol:
no base class to inherit). The loop calls, in this order:

1. `task.setup(ctx, resume)`: build the engine's model and optimizer
   (`ctx.engine.build(...)`), from `resume.weights()` when resuming, else from
   the task's own initial weights; set `task.total_steps`; return one line that
   describes the start (printed), or "".
   The loop then restores `ctx.engine.load_state(resume.path)` and the TrainState.
2. per step `s` (0-based, global over epochs): `task.lr(s)`, `task.batches(s)`
   (a list of micro-batches: gradient accumulation), `engine.train_step(...)`,
   `task.work(batches)` (real tokens and FLOPs of the step, for tok/s and MFU).
3. after the step (`done = s + 1`): `task.log_due(done, start)` -> a log record
   (`task.record_fields(done)` adds e.g. the epoch); `task.eval_due(done)` ->
   `task.evaluate(ctx, state, done, loss)`, which returns an `Evaluation`
   (the selection metric's value and the record to log) or None;
   `task.checkpoint_due(done)` -> save `last` (the end of the stage, a
   preemption and an early stop always save it).
4. at the end: `task.result_metrics(ctx, state)` -> the StageResult's metrics.

The selection metric is `task.metric` (a key of the evaluation record), better
when lower (`task.mode == "min"`, e.g. val_loss) or higher ("max", e.g.
val_accuracy); `task.patience` evaluations without improvement stop early (0 = off;
never on the stage's last step).

The cursor in a manifest is the task's business: `task.cursor(step)` writes it
({"step": n} for the LM, {"epoch": e, "index": i} for classification) and
`task.step_of(cursor)` reads it back. Everything the next step depends on is in
(weights, engine state, TrainState, cursor), so resuming is bit-exact.

Checkpoints (see docs/training-contract.md for the layout)
---------------------------------------------------------
`CheckpointManager` writes `run_dir/checkpoints/<name>/` through
`training.core.checkpoint.write_checkpoint` (atomic, sha256-sealed). Its
manifest (format `envkit.checkpoint/v2`) carries the engine, stage, config, world
size, pad id, classes, step, cursor, status, metrics, history, the TrainState
block `state` and the task's extras (`task.manifest_extra(state)`). Manifests of
format `envkit-checkpoint/1` (written before the stage loop) are read and
migrated by `TrainState.from_manifest`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from envkit.vocab import parse_format_id
from training.core import checkpoint as ckpt
from training.core.metrics import MetricsLog
from training.core.progress import StageProgress, format_record

if TYPE_CHECKING:
    from training.core.config import TrainConfig
    from training.core.data import PreparedData
    from training.engines.base import Batch, DistInfo, Engine

# called after every optimizer step with (steps done, engine): custom logging, tests
StepHook = Callable[[int, "Engine"], None]
Status = Literal["running", "completed", "early_stopped", "preempted"]


class TrainingDiverged(RuntimeError):
    """Loss or gradients became NaN/inf; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """A checkpoint exists but cannot continue this run (message says why)."""


# ---------------------------------------------------------------------------
# state


@dataclass
class TrainState:
    """Everything the loop itself carries from step to step (the engine holds the rest).

    `step` counts optimizer steps done in this stage. `best_value`/`best_step` are the
    best selection metric so far and the step it was reached at; `best_record` is that
    evaluation's record. `since_best` counts evaluations without improvement (patience).
    `metrics` holds the latest figures (loss, tokens/s, MFU, val metrics) and `history`
    one entry per evaluation where the task keeps one. `skipped_steps` counts fp16 steps
    the grad scaler skipped (overflowing gradients: no update applied).
    """

    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    best_record: dict[str, Any] = field(default_factory=dict)
    since_best: int = 0
    status: str = "running"
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0

    def improved(self, value: float, mode: str) -> bool:
        """Is `value` better than the best so far (strictly)?"""
        if self.best_value is None:
            return True
        return value < self.best_value if mode == "min" else value > self.best_value

    def to_manifest(self) -> dict[str, Any]:
        """The `state` block of a manifest (strict JSON: no Infinity)."""
        out = asdict(self)
        out.pop("metrics")
        out.pop("history")
        out.pop("status")
        out.pop("step")
        return out

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], step: int) -> TrainState:
        """Rebuild the state a checkpoint was written with (either manifest format)."""
        kind, version = parse_format_id(manifest.get("format", ""))
        if kind != "checkpoint":
            raise ckpt.CheckpointError(f"not a checkpoint manifest: {manifest.get('format')!r}")
        state = cls(
            step=step,
            status=str(manifest.get("status", "running")),
            metrics=dict(manifest.get("metrics") or {}),
            history=list(manifest.get("history") or []),
        )
        if version >= 2:
            block = manifest.get("state") or {}
            state.best_value = block.get("best_value")
            state.best_step = block.get("best_step")
            state.best_record = dict(block.get("best_record") or {})
            state.since_best = int(block.get("since_best", 0))
            state.skipped_steps = int(block.get("skipped_steps", 0))
            return state
        # envkit-checkpoint/1: the two stages wrote their own keys
        if "best_val_loss" in manifest or "evals_since_best" in manifest:
            state.best_value = manifest.get("best_val_loss")
            state.best_step = state.metrics.get("best_step")
            state.since_best = int(manifest.get("evals_since_best", 0))
            if state.best_value is not None:
                state.best_record = {"val_loss": state.best_value}
        else:
            acc = manifest.get("best_val_accuracy")
            if acc is not None and float(acc) >= 0:  # -1 meant "no evaluation yet"
                state.best_value = float(acc)
                state.best_record = {
                    "val_accuracy": float(acc),
                    "val_f1": manifest.get("best_val_f1"),
                    "epoch": manifest.get("best_epoch"),
                }
            state.since_best = int(manifest.get("epochs_since_best", 0))
        return state


@dataclass
class Evaluation:
    """One evaluation: the selection metric's value and the record to log (stage/step added)."""

    value: float
    record: dict[str, Any]


@dataclass
class Work:
    """What one optimizer step computed, over all ranks: real (non-pad) tokens and model FLOPs."""

    tokens: int
    flops: float


@dataclass
class StageResult:
    stage: str
    status: str  # completed | early_stopped | preempted
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------
# the task protocol


class StageTask(Protocol):
    """What a task tells the stage loop (see the module docstring for the call order)."""

    stage: str  # "pretrain", "finetune", ...: manifests, log records, messages
    last_name: str  # checkpoint written at the end / on preemption / every checkpoint_due
    best_name: str  # checkpoint written when the selection metric improves
    metric: str  # key of the evaluation record that selects the best checkpoint
    mode: Literal["min", "max"]
    patience: int  # evaluations without improvement before an early stop; 0 = off
    total_steps: int  # set by setup()
    lr_key: str  # the config key a user lowers when the loss diverges (named in the message)
    keep_step_checkpoints: bool  # also write step-NNNNNNN at each checkpoint_due

    def setup(self, ctx: StageContext, resume: Resume | None) -> str: ...
    def cursor(self, step: int) -> dict[str, int]: ...
    def step_of(self, cursor: dict[str, Any]) -> int: ...
    def lr(self, step: int) -> float: ...
    def batches(self, step: int) -> list[Batch]: ...
    def work(self, batches: list[Batch]) -> Work: ...
    def log_due(self, done: int, start: int) -> bool: ...
    def record_fields(self, done: int) -> dict[str, Any]: ...
    def eval_due(self, done: int) -> bool: ...
    def evaluate(self, ctx: StageContext, state: TrainState, done: int, loss: float) -> Evaluation | None: ...
    def checkpoint_due(self, done: int) -> bool: ...
    def manifest_extra(self, state: TrainState) -> dict[str, Any]: ...
    def result_metrics(self, ctx: StageContext, state: TrainState) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------
# checkpoints


def model_shape(model: Any) -> dict[str, Any]:
    """The model keys a checkpoint's weights depend on (a dict or a ModelConfig)."""
    keys = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")
    get = model.get if isinstance(model, dict) else lambda k: getattr(model, k)
    return {k: get(k) for k in keys}


@dataclass
class Resume:
    """A checkpoint that passed every resume check."""

    path: Path
    manifest: dict[str, Any]

    def weights(self) -> dict[str, np.ndarray]:
        return ckpt.load_weights(self.path)


class CheckpointManager:
    """Names, writes and checks the checkpoints of one stage in `run_dir/checkpoints/`.

    `save` is collective (every rank exports its shard of the weights and state; rank 0
    writes). `find_resume(name)` returns a `Resume` only when the checkpoint can continue
    this run: same stage, world size, model shape and engine; otherwise a ResumeError
    that names the difference and the fix.
    """

    def __init__(
        self, cfg: TrainConfig, stage: str, engine: Engine, dist: DistInfo, common: dict[str, Any]
    ) -> None:
        self.cfg, self.stage, self.engine, self.dist = cfg, stage, engine, dist
        self.root = ckpt.checkpoint_root(cfg.runtime.run_dir)
        self.common = common  # manifest keys of every checkpoint of the run (pad_id, classes)
        if dist.is_main:
            ckpt.clean_stale(self.root)

    def find(self, name: str) -> Path | None:
        """The complete checkpoint `name` (or the previous one left by a torn swap)."""
        return ckpt.find_checkpoint(self.root, name)

    def find_resume(self, name: str) -> Resume | None:
        """The checkpoint to continue from (resume=auto), checked; None to start fresh."""
        if self.cfg.runtime.resume != "auto":
            return None
        path = self.find(name)
        if path is None:
            return None
        manifest = ckpt.read_manifest(path)
        self.check(path, manifest)
        return Resume(path, manifest)

    def check(self, path: Path, manifest: dict[str, Any]) -> None:
        """Refuse a checkpoint that would not continue the same trajectory."""
        if manifest.get("stage") != self.stage:
            raise ResumeError(
                f"checkpoint {path} is from stage {manifest.get('stage')!r}, not {self.stage!r}"
            )
        if manifest.get("world_size") != self.dist.world_size:
            raise ResumeError(
                f"checkpoint {path} was written by {manifest.get('world_size')} process(es) and this run "
                f"has {self.dist.world_size}: each rank's data shard and the global batch depend on the "
                "world size, so the run would not continue the same trajectory; resume with the same "
                "torchrun --nproc-per-node, or start a new run_dir (or resume=never)"
            )
        saved, now = model_shape(manifest["config"]["model"]), model_shape(self.cfg.model)
        if saved != now:
            diff = {k: (saved[k], v) for k, v in now.items() if saved[k] != v}
            raise ResumeError(
                f"checkpoint {path} has another model shape {diff} (checkpoint, now); "
                "use a new run_dir or resume=never"
            )
        if manifest.get("engine") != self.engine.name:
            raise ResumeError(
                f"checkpoint {path} was written by engine {manifest.get('engine')!r}; its optimizer state "
                f"cannot continue in {self.engine.name!r}; resume with engine={manifest.get('engine')} or "
                "restart the stage with resume=never (weights still move: the next stage and `test` "
                "read them in either engine)"
            )

    def save(self, name: str, task: StageTask, state: TrainState, step: int, status: str) -> Path | None:
        """Collective: write checkpoint `name` at `step` with `status`; the path on rank 0."""
        weights = self.engine.export_weights()
        if not self.dist.is_main:
            self.engine.save_state(None)
            self.engine.barrier()
            return None
        manifest = {
            "engine": self.engine.name,
            "stage": self.stage,
            "config": self.cfg.to_dict(),
            "seeds": {"seed": self.cfg.runtime.seed},
            "world_size": self.dist.world_size,
            **self.common,
            "step": step,
            "cursor": task.cursor(step),
            "status": status,
            "metrics": dict(state.metrics),
            "history": list(state.history),
            "state": state.to_manifest(),
            **task.manifest_extra(state),
        }
        path = ckpt.write_checkpoint(self.root, name, weights, manifest, self.engine.save_state)
        self.engine.barrier()
        return path


# ---------------------------------------------------------------------------
# what the loop hands to a task


@dataclass
class StageContext:
    """The run a task works in: config, rank, engine, data, checkpoints, metrics log."""

    cfg: TrainConfig
    dist: DistInfo
    engine: Engine
    data: PreparedData
    checkpoints: CheckpointManager
    log: MetricsLog

    def reduce_mean(self, value: float) -> float:
        """Mean of `value` over ranks."""
        if self.dist.world_size == 1:
            return value
        total = self.engine.all_reduce_sum(np.array([value], dtype=np.float64))
        return float(total[0] / self.dist.world_size)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if self.dist.world_size == 1:
            return flag
        return bool(self.engine.all_reduce_sum(np.array([float(flag)]))[0] > 0)


class TermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (preemption)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> TermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class ThroughputWindow:
    """Step time, tokens/s and MFU over the steps since the last log record."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds, self.tokens, self.flops, self.steps, self.skipped = 0.0, 0, 0.0, 0, 0

    def add(self, seconds: float, work: Work, skipped: bool) -> None:
        self.seconds += seconds
        self.tokens += work.tokens
        self.flops += work.flops
        self.steps += 1
        self.skipped += int(skipped)

    def record(self, engine: Engine, world_size: int) -> dict[str, Any]:
        """The window's figures; MFU = FLOPs/s / (peak · ranks), None without a known peak."""
        dev = engine.device_info()
        tps = self.tokens / self.seconds if self.seconds > 0 else 0.0
        mfu = None
        if dev.peak_tflops and self.seconds > 0:
            mfu = self.flops / self.seconds / (dev.peak_tflops * 1e12 * world_size)
        mem = engine.peak_memory_bytes()
        out = {
            "step_ms": self.seconds * 1000.0 / max(1, self.steps),
            "tokens_per_s": tps,
            "mfu": mfu,
            "peak_mem_mb": mem / 2**20 if mem else None,
            "skipped_steps": self.skipped,
        }
        self.reset()
        return out


# ---------------------------------------------------------------------------
# the loop


def run_stage(task: StageTask, ctx: StageContext, on_step: StepHook | None = None) -> StageResult:
    """Run (or resume) one stage of `task` to its end, an early stop, or a preemption."""
    cfg, eng, dist = ctx.cfg, ctx.engine, ctx.dist
    resume = ctx.checkpoints.find_resume(task.last_name)
    intro = task.setup(ctx, resume)
    start = 0
    state = TrainState()
    if resume is not None:
        eng.load_state(resume.path)
        start = task.step_of(resume.manifest["cursor"])
        state = TrainState.from_manifest(resume.manifest, start)
        if state.status == "early_stopped":
            return StageResult(
                task.stage, "completed", start, task.result_metrics(ctx, state), str(resume.path)
            )
    total = task.total_steps
    prog = StageProgress(task.stage, total, start, cfg.runtime.progress, dist.is_main)
    if intro:
        prog.log(intro)
    if start and resume is not None:
        prog.log(f"{task.stage}: resumed from {resume.path} at step {start}")
    last_path = str(resume.path) if resume else None
    dev = eng.device_info()
    if dev.kind == "gpu" and dev.peak_tflops is None:
        prog.log(f"{task.stage}: MFU n/a: {dev.peak_note or 'no dense peak for this GPU'}")
    # Under fp16 an overflowing step is routine: the grad scaler skips it and backs off.
    fp16 = dev.dtype == "fp16"
    window = ThroughputWindow()
    status = "completed"
    state.status = "running"
    done = start
    try:
        with TermFlag() as term:
            for step in range(start, total):
                lr = task.lr(step)
                eng.set_lr(lr)
                batches = task.batches(step)
                t0 = time.perf_counter()
                res = eng.train_step(batches, cfg.optim.grad_clip)
                dt = time.perf_counter() - t0
                done = state.step = step + 1
                loss = ctx.reduce_mean(res.loss)
                scaler_skip = fp16 and res.skipped and math.isfinite(loss)
                if (
                    not math.isfinite(loss)
                    or (res.skipped and not scaler_skip)
                    or (not fp16 and not math.isfinite(res.grad_norm))
                ):
                    raise TrainingDiverged(_diverged(task, cfg, loss, res.grad_norm, done, last_path, eng))
                state.skipped_steps += int(scaler_skip)
                if on_step is not None:
                    on_step(done, eng)
                window.add(dt, task.work(batches), scaler_skip)
                if task.log_due(done, start):
                    rec = {"stage": task.stage, "step": done, **task.record_fields(done)}
                    # strict JSON: an overflowed (skipped) fp16 step has no finite norm
                    norm = res.grad_norm if math.isfinite(res.grad_norm) else None
                    rec.update(loss=loss, lr=lr, grad_norm=norm)
                    rec.update(window.record(eng, dist.world_size))
                    ctx.log.log(rec)
                    prog.log(format_record(rec))
                    state.metrics.update(final_loss=loss, tokens_per_s=rec["tokens_per_s"], mfu=rec["mfu"])
                stop_early = False
                if task.eval_due(done):
                    ev = task.evaluate(ctx, state, done, loss)
                    if ev is not None:
                        rec = {"stage": task.stage, "step": done, **ev.record}
                        ctx.log.log(rec)
                        prog.log(format_record(rec))
                        if state.improved(ev.value, task.mode):
                            state.best_value, state.best_step, state.since_best = ev.value, done, 0
                            state.best_record = dict(ev.record)
                            state.metrics.update({f"best_{task.metric}": ev.value, "best_step": done})
                            ctx.checkpoints.save(task.best_name, task, state, done, "best")
                        else:
                            state.since_best += 1
                            stop_early = 0 < task.patience <= state.since_best and done < total
                preempted = ctx.any_rank(term.raised)
                if stop_early:
                    status = "early_stopped"
                elif preempted:
                    status = "preempted"
                is_end = done == total or status != "completed"
                if is_end or task.checkpoint_due(done):
                    saved = ctx.checkpoints.save(task.last_name, task, state, done, status)
                    last_path = str(saved) if saved else last_path
                    if task.keep_step_checkpoints and not is_end:
                        ctx.checkpoints.save(f"step-{done:07d}", task, state, done, "step")
                prog.advance(done, f"loss {loss:.3f}")
                if status == "early_stopped":
                    prog.log(f"{task.stage}: early stop at step {done} (best at step {state.best_step})")
                    break
                if status == "preempted":
                    prog.log(f"{task.stage}: preempted at step {done}; checkpoint {last_path}")
                    break
    finally:
        prog.close()
    state.status = status
    state.metrics["skipped_steps"] = state.skipped_steps
    return StageResult(task.stage, status, done, task.result_metrics(ctx, state), last_path)


def _diverged(
    task: StageTask, cfg: TrainConfig, loss: float, grad_norm: float, done: int, last: str | None, eng: Engine
) -> str:
    hint = " or dtype=fp32" if eng.device_info().dtype != "fp32" else ""
    return (
        f"{task.stage}: loss became {loss} (grad norm {grad_norm}) at step {done}; stopped without saving; "
        f"the last good checkpoint is {last or 'none yet'}; try a lower {task.lr_key} "
        f"(now {cfg.get_key(task.lr_key)}){hint}"
    )


def open_stage(cfg: TrainConfig, stage: str, dist: DistInfo | None = None) -> StageContext:
    """Open the prepared data, create the engine, checkpoint manager and metrics log of a stage."""
    from training.core.prepare import open_prepared
    from training.engines import get_engine
    from training.engines.base import DistInfo as _DistInfo

    dist = dist or _DistInfo.from_env()
    data = open_prepared(cfg)
    engine = get_engine(cfg.runtime.engine)(cfg, dist)
    manager = CheckpointManager(cfg, stage, engine, dist, {"pad_id": data.pad_id, "classes": data.classes})
    log = MetricsLog(Path(cfg.runtime.run_dir), enabled=dist.is_main)
    return StageContext(cfg, dist, engine, data, manager, log)
