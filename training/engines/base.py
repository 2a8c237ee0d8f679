"""The engine interface: what a framework must provide for the training loop.

How an engine plugs in
----------------------
The loop lives in `training.core.stage` (its two tasks in `training.core.tasks`)
and is framework-free. It owns the schedule (warm-up + cosine, computed from
the step), the data (NumPy batches from `training.core.data`), evaluation cadence, metrics, checkpoints
(`training.core.checkpoint`), SIGTERM handling, NaN stop, early stopping and
resume. For each run it:

1. creates the engine: `get_engine(cfg.runtime.engine)(cfg, dist)` (registry in
   `training/engines/__init__.py`, imported lazily);
2. calls `engine.build(task, model_cfg, pad_id, weights, optim)` once per stage
   (`task` is "lm" for pretraining, "cls" for fine-tuning/testing; `weights` is
   a contract-named dict to start from, e.g. the pretrained backbone);
3. per optimizer step: `engine.set_lr(lr)` then `engine.train_step(micro_batches,
   grad_clip)`: forward/backward over every micro-batch (gradient accumulation,
   loss averaged over micro-batches; DDP syncs only on the last one), clip,
   step, and return the loss, the pre-clip gradient norm and whether the update
   was skipped because something was not finite (then the weights are untouched);
4. evaluation: `engine.eval_step(batch)` returns summed loss + count (LM) or
   logits (classification);
5. checkpoints: the loop asks `engine.export_weights()` (float32 NumPy arrays
   named exactly as in docs/training-contract.md, no `module.`/`_orig_mod.`
   prefixes) and lets `engine.save_state(tmp_dir)` add its optimizer, scaler
   and RNG state; on resume it calls `engine.import_weights(...)` then
   `engine.load_state(dir)`.

Batches are NumPy: `LMBatch(x, y)` with int64 [B, T] ids and next-token
targets; `ClsBatch(ids, labels)` with int64 [B, L] ids right-padded with
`pad_id` and int64 [B] labels. Classification logits come from the masked
mean of the final LayerNorm output over positions where ids != pad_id.

In distributed runs (torchrun) each rank builds its own engine; the loop feeds
each rank its own deterministic shard, uses `all_reduce_sum` for metrics, and
only rank 0 (`dist.is_main`) writes files. An engine that cannot run
distributed raises `EngineError` in `__init__` when `dist.world_size > 1`.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

if TYPE_CHECKING:
    from training.core.config import ModelConfig, TrainConfig

Task = Literal["lm", "cls"]


class EngineError(RuntimeError):
    """The engine cannot do what the config asks (message says why and what to change)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a distributed run (torchrun's environment variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """torchrun's RANK/WORLD_SIZE/LOCAL_RANK; else a TF_CONFIG worker index/count; else one process."""
        if "RANK" not in os.environ and os.environ.get("TF_CONFIG"):
            try:
                spec = json.loads(os.environ["TF_CONFIG"])
                workers = spec.get("cluster", {}).get("worker", [])
                if workers:
                    return cls(rank=int(spec.get("task", {}).get("index", 0)), world_size=len(workers))
            except (ValueError, AttributeError, TypeError):
                pass  # the TensorFlow engine reports a malformed TF_CONFIG with its own message
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


@dataclass(frozen=True)
class OptimSpec:
    """AdamW settings for one stage; no weight decay on biases, norms and embeddings."""

    weight_decay: float
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8


@dataclass
class LMBatch:
    x: np.ndarray  # int64 [B, T] input ids
    y: np.ndarray  # int64 [B, T] next-token targets

    @property
    def tokens(self) -> int:
        return int(self.x.size)


@dataclass
class ClsBatch:
    ids: np.ndarray  # int64 [B, L], right-padded with pad_id
    labels: np.ndarray  # int64 [B]

    @property
    def tokens(self) -> int:
        return int(self.ids.size)


Batch = LMBatch | ClsBatch


@dataclass
class StepResult:
    loss: float  # mean loss over the micro-batches (this rank)
    grad_norm: float  # total L2 norm before clipping
    # True when no update was applied: the loss or gradients were not finite, or (fp16)
    # the grad scaler found overflowing gradients and skipped the step
    skipped: bool = False


@dataclass
class EvalOutput:
    loss_sum: float  # summed per-token (LM) or per-example (cls) loss
    count: int  # tokens (LM) or examples (cls)
    logits: np.ndarray | None = None  # [B, n_classes] for classification


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # envkit.vocab.Device: "cpu" | "gpu"
    name: str  # e.g. "cpu", "NVIDIA H200"
    dtype: str  # compute dtype actually used (envkit.vocab.DType): fp32 | bf16 | fp16
    peak_tflops: float | None  # dense peak for that dtype from the matrix; None on CPU/unknown
    peak_note: str | None = None  # why peak_tflops is None (MFU then reads n/a)


class Engine(ABC):
    """One framework's model, optimizer and state. See the module docstring."""

    name: ClassVar[str]
    # Model replicas this process drives (tf.distribute over several local devices).
    # The loop samples batch_size rows per replica, so the global batch is
    # batch_size x local_replicas x world_size. One for PyTorch (one rank per device).
    local_replicas: int = 1

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        self.cfg = cfg
        self.dist = dist

    @abstractmethod
    def build(
        self,
        task: Task,
        model: ModelConfig,
        pad_id: int,
        weights: dict[str, np.ndarray] | None,
        optim: OptimSpec,
    ) -> None:
        """Create model + optimizer for `task`; start from `weights` when given.

        For task "cls" the weights may lack `cls_head.*` (a pretrained backbone):
        the head is then freshly initialised. Unknown or mis-shaped names are an error.
        """

    @abstractmethod
    def num_params(self, exclude_position: bool = True) -> int:
        """Trainable parameters (tied embedding counted once; `wpe` excluded by default)."""

    @abstractmethod
    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group for the next step."""

    @abstractmethod
    def train_step(self, micro_batches: list[Batch], grad_clip: float) -> StepResult:
        """One optimizer step over `micro_batches` (gradient accumulation)."""

    @abstractmethod
    def eval_step(self, batch: Batch) -> EvalOutput:
        """Forward pass without gradients and without dropout."""

    @abstractmethod
    def export_weights(self) -> dict[str, np.ndarray]:
        """Float32 arrays named per the contract (PyTorch layout: Linear weight [out, in])."""

    @abstractmethod
    def import_weights(self, weights: dict[str, np.ndarray], strict: bool = True) -> None:
        """Load contract-named arrays; `strict=False` tolerates a missing `cls_head`."""

    @abstractmethod
    def save_state(self, directory: Path) -> None:
        """Write optimizer, grad-scaler and RNG state into `directory` (a temp checkpoint dir)."""

    @abstractmethod
    def load_state(self, directory: Path) -> None:
        """Restore what `save_state` wrote, so the next step equals the uninterrupted run."""

    @abstractmethod
    def device_info(self) -> DeviceInfo:
        """Where and in which dtype the engine computes."""

    def peak_memory_bytes(self) -> int | None:
        """Peak accelerator (or process) memory since the last reset; None when unknown."""
        return None

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum `values` over ranks (identity in a single process)."""
        return values

    def barrier(self) -> None:  # noqa: B027 (optional hook: a no-op in one process)
        """Wait for every rank (no-op in a single process)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release process groups and devices."""
