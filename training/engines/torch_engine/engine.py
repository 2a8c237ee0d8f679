"""The PyTorch engine: GPT + AdamW, accumulation, autocast, compile, DDP / FSDP2."""

from __future__ import annotations

import atexit
import contextlib
import math
import random
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from envkit.matrix import MatrixError, load_matrix
from envkit.vocab import DType
from training.core.config import ModelConfig, TrainConfig
from training.engines.base import (
    Batch,
    ClsBatch,
    DeviceInfo,
    DistInfo,
    Engine,
    EngineError,
    EvalOutput,
    LMBatch,
    OptimSpec,
    StepResult,
    Task,
)
from training.engines.torch_engine.model import GPT

STATE_FILE = "optimizer.pt"


def _pick_device(cfg: TrainConfig, dist: DistInfo) -> torch.device:
    want = cfg.runtime.device
    if want == "auto":
        want = "gpu" if torch.cuda.is_available() else "cpu"
    if want == "gpu":
        if not torch.cuda.is_available():
            raise EngineError(
                "device=gpu but torch sees no CUDA GPU; use device=cpu or a CUDA build of torch"
            )
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def _pick_dtype(cfg: TrainConfig, device: torch.device) -> str:
    """dtype=auto: bf16 where the GPU computes it natively (compute capability >= 8.0), else fp16.

    `torch.cuda.is_bf16_supported()` also says yes for emulated bf16 (V100, T4), which
    runs far slower than fp16 with the grad scaler; the capability is the honest test.
    """
    if cfg.runtime.dtype != "auto":
        return cfg.runtime.dtype
    if device.type != "cuda":
        return DType.FP32
    return DType.BF16 if torch.cuda.get_device_capability(device) >= (8, 0) else DType.FP16


class TorchEngine(Engine):
    name = "pytorch"

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        super().__init__(cfg, dist)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self.device = _pick_device(cfg, dist)
        self.dtype = _pick_dtype(cfg, self.device)
        if self.device.type == "cuda":
            # TF32 for the float32 matmuls that remain outside autocast
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats(self.device)
        self._pg = False
        if dist.world_size > 1:
            import torch.distributed as tdist

            if not tdist.is_initialized():
                tdist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
                self._pg = True
                # one group per process, kept across stages of a cycle; closed at exit
                atexit.register(self.close)
        self.model: torch.nn.Module | None = None  # the module that runs (DDP / compiled / sharded)
        self.raw: GPT | None = None  # the plain GPT whose names are the checkpoint names
        self.opt: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.task: Task = "lm"
        self._device_info: DeviceInfo | None = None

    # -- construction ---------------------------------------------------------
    def build(
        self,
        task: Task,
        model: ModelConfig,
        pad_id: int,
        weights: dict[str, np.ndarray] | None,
        optim: OptimSpec,
    ) -> None:
        self.task = task
        seed = self.cfg.runtime.seed
        torch.manual_seed(seed)  # identical init on every rank
        self.raw = self._build_model(task, model, pad_id, weights)
        self.model = self.parallelize(self.raw)
        self.opt = self._make_optimizer(optim)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == DType.FP16 else None
        # dropout stream: distinct per rank, fixed by the seed
        torch.manual_seed(seed + 1 + self.dist.rank)

    def _build_model(
        self, task: Task, model: ModelConfig, pad_id: int, weights: dict[str, np.ndarray] | None
    ) -> GPT:
        """The plain GPT on this engine's device, from `weights` when given."""
        raw = GPT(model, task=task, pad_id=pad_id)
        self.raw = raw
        if weights is not None:
            self.import_weights(weights, strict=not (task == "cls" and "cls_head.weight" not in weights))
        return raw.to(self.device)

    def parallelize(self, raw: GPT) -> torch.nn.Module:
        """Wrap the built model for how it runs: FSDP2 per block, or DDP, then torch.compile.

        Apart from building, so that checkpoints always use the plain model's names and a
        new wrapping (tensor parallel, another compile mode) is one change here.
        """
        run: torch.nn.Module = raw
        self.fsdp = self.dist.world_size > 1 and self.cfg.runtime.distributed == "fsdp"
        self.ddp = self.dist.world_size > 1 and not self.fsdp
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in raw.h:
                fully_shard(block)
            fully_shard(raw)
        elif self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            run = DistributedDataParallel(raw, device_ids=ids)
        if self.cfg.runtime.compile:
            run = torch.compile(run)
        return run

    def _make_optimizer(self, optim: OptimSpec) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.raw.named_parameters():
            if not p.requires_grad:
                continue
            # decay only matmul weights: not biases, LayerNorm gains, or the (tied) embeddings
            (decay if p.dim() >= 2 and not name.startswith(("wte.", "wpe.")) else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # one fused kernel per step on CUDA; multi-tensor (foreach) ops on CPU, fewer Python loops
        extra: dict[str, Any] = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=0.0, betas=(optim.beta1, optim.beta2), eps=optim.eps, **extra)

    def num_params(self, exclude_position: bool = True) -> int:
        assert self.raw is not None
        return self.raw.num_params(exclude_position)

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    # -- steps ----------------------------------------------------------------
    def _autocast(self):
        if self.dtype == DType.FP32:
            return contextlib.nullcontext()
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16
        )

    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = (batch.x, batch.y) if isinstance(batch, LMBatch) else (batch.ids, batch.labels)
        nb = self.device.type == "cuda"
        # np.array copies: batches may be read-only views of memory-mapped files
        return (
            torch.from_numpy(np.array(a, dtype=np.int64)).to(self.device, non_blocking=nb),
            torch.from_numpy(np.array(b, dtype=np.int64)).to(self.device, non_blocking=nb),
        )

    def _sync_context(self, last: bool):
        if self.ddp and not last:
            module = self.model._orig_mod if hasattr(self.model, "_orig_mod") else self.model
            return module.no_sync()
        if self.fsdp:
            self.raw.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def train_step(self, micro_batches: list[Batch], grad_clip: float) -> StepResult:
        self.model.train()
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            x, y = self._tensors(batch)
            with self._sync_context(i == n - 1), self._autocast():
                _, loss = self.model(x, y)
                loss = loss / n
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        params = [p for p in self.raw.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        # one device->host copy per step: the NaN check needs both numbers on the host
        loss_value, norm_value = torch.stack([total.float(), norm.float()]).tolist()
        if self.scaler is not None:
            # fp16: an overflowing step is normal; the scaler skips it and lowers the scale.
            # A skip shows as a lower scale after update() (found_inf was set), even when
            # the loss itself was finite: report it, never count it as an applied update.
            scale_before = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            skipped = not math.isfinite(loss_value) or self.scaler.get_scale() < scale_before
        elif math.isfinite(loss_value) and math.isfinite(norm_value):
            self.opt.step()
            skipped = False
        else:
            skipped = True  # never apply a non-finite update: the weights stay the last good ones
        self.opt.zero_grad(set_to_none=True)
        return StepResult(loss_value, norm_value, skipped)

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> EvalOutput:
        self.model.eval()
        x, y = self._tensors(batch)
        with self._autocast():
            logits, loss = self.model(x, y)
        if isinstance(batch, ClsBatch):
            loss_sum = float(F.cross_entropy(logits.float(), y, reduction="sum"))
            return EvalOutput(loss_sum, int(y.numel()), logits.float().cpu().numpy())
        return EvalOutput(float(loss) * y.numel(), int(y.numel()))

    # -- weights and state ------------------------------------------------------
    def export_weights(self) -> dict[str, np.ndarray]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(
                self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            state = self.raw.state_dict()
        return {k: v.detach().float().cpu().numpy().copy() for k, v in state.items()}

    def import_weights(self, weights: dict[str, np.ndarray], strict: bool = True) -> None:
        own = self.raw.state_dict()
        incoming = dict(weights)
        if self.task == "lm":
            incoming = {k: v for k, v in incoming.items() if not k.startswith("cls_head.")}
        missing = [k for k in own if k not in incoming and (strict or not k.startswith("cls_head."))]
        unexpected = [k for k in incoming if k not in own]
        if missing or unexpected:
            raise EngineError(
                f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for k, arr in incoming.items():
                if tuple(arr.shape) != tuple(own[k].shape):
                    raise EngineError(
                        f"weight {k} has shape {tuple(arr.shape)}, the model wants {tuple(own[k].shape)}"
                    )
                own[k].copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))

    def _rng_state(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [*random.getstate()[1], random.getstate()[0]],
            "python_gauss": random.getstate()[2],
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
        }

    def _set_rng_state(self, s: dict[str, Any]) -> None:
        torch.set_rng_state(s["torch"])
        if s["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
        py = s["python"]
        random.setstate((py[-1], tuple(py[:-1]), s["python_gauss"]))
        np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"]))

    def save_state(self, directory: Path | None) -> None:
        rng = self._rng_state()
        if self.dist.world_size > 1:
            import torch.distributed as tdist

            gathered: list[Any] = [None] * self.dist.world_size
            tdist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt_state = get_optimizer_state_dict(
                self.raw, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            opt_state = self.opt.state_dict()
        if directory is None:
            return
        state = {
            "optimizer": opt_state,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "world_size": self.dist.world_size,
        }
        torch.save(state, Path(directory) / STATE_FILE)

    def load_state(self, directory: Path) -> None:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.raw,
                self.opt,
                optim_state_dict=state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        self._set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])

    # -- environment ----------------------------------------------------------------
    def device_info(self) -> DeviceInfo:
        if self.device.type != "cuda":
            return DeviceInfo("cpu", "cpu", self.dtype, None, "no dense peak for a CPU in the matrix")
        if self._device_info is None:
            name = torch.cuda.get_device_name(self.device)
            dtype = self.dtype
            if dtype == DType.FP32 and torch.backends.cuda.matmul.allow_tf32:
                dtype = DType.TF32  # the matmuls outside autocast run on TF32 tensor cores
            sms = torch.cuda.get_device_properties(self.device).multi_processor_count
            try:
                lookup = load_matrix().peak_lookup(name, str(dtype), sms)
                peak, note = lookup.tflops, lookup.reason
            except MatrixError as exc:  # a broken matrix.yaml: say so, train on
                peak, note = None, f"the version matrix cannot be read ({exc})"
            self._device_info = DeviceInfo("gpu", name, self.dtype, peak, note)
        return self._device_info

    def peak_memory_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        if self.dist.world_size == 1:
            return values
        import torch.distributed as tdist

        t = torch.from_numpy(np.asarray(values, dtype=np.float64).copy())
        if self.device.type == "cuda":
            t = t.to(self.device)
        tdist.all_reduce(t)
        return t.cpu().numpy()

    def barrier(self) -> None:
        if self.dist.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def close(self) -> None:
        if self._pg:
            import torch.distributed as tdist

            tdist.destroy_process_group()
            self._pg = False
