"""The PyTorch engine, driving a pretrained transformers model instead of the project's GPT.

Everything that makes a step (AdamW groups, accumulation, autocast, DDP/FSDP2, clipping,
the fp16 grad scaler, RNG state in checkpoints) is `TorchEngine`'s own; this subclass only
says which module is built and what its checkpoint weights are (`HFTaskModule`'s
trainable state: every weight in full fine-tuning, adapters + head with LoRA).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.core.config import ModelConfig, TrainConfig
from training.engines.base import DistInfo, EngineError, Task
from training.engines.torch_engine.engine import TorchEngine
from training.hf.loading import load_tokenizer
from training.hf.module import HFTaskModule, build_module
from training.hf.source import resolve_source


class HFTorchEngine(TorchEngine):
    """TorchEngine whose model is `cfg.hf.model` loaded by transformers (name stays "pytorch")."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo) -> None:
        super().__init__(cfg, dist)
        self.settings = cfg.hf
        self.source = resolve_source(self.settings.model)
        self.tokenizer: Any = load_tokenizer(self.source)
        self.raw: HFTaskModule | None = None  # type: ignore[assignment]

    def _build_model(
        self, task: Task, model: ModelConfig, pad_id: int, weights: dict[str, np.ndarray] | None
    ) -> HFTaskModule:
        module, _ = build_module(
            self.settings, model.n_classes, self.device.type, self.source, self.tokenizer
        )
        self.raw = module
        if weights is not None:
            self.import_weights(weights)
        return module.to(self.device)

    def parallelize(self, raw: Any) -> torch.nn.Module:
        self.fsdp = self.dist.world_size > 1 and self.cfg.runtime.distributed == "fsdp"
        self.ddp = self.dist.world_size > 1 and not self.fsdp
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            # shard per transformer layer: the classes transformers itself never splits
            layer_types = set(getattr(raw.model, "_no_split_modules", None) or [])
            for module in raw.modules():
                if type(module).__name__ in layer_types:
                    fully_shard(module)
            fully_shard(raw)
            return torch.compile(raw) if self.cfg.runtime.compile else raw
        return super().parallelize(raw)

    def num_params(self, exclude_position: bool = True) -> int:
        assert self.raw is not None
        return self.raw.num_params(exclude_position)

    def export_weights(self) -> dict[str, np.ndarray]:
        assert self.raw is not None
        if not self.fsdp:
            return self.raw.trainable_state()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        keep = set(self.raw.trainable_state_names())
        prefix = "model."  # HFTaskModule holds the transformers model as `model`
        return {
            k[len(prefix) :]: v.detach().float().cpu().numpy().copy()
            for k, v in full.items()
            if k[len(prefix) :] in keep
        }

    def import_weights(self, weights: dict[str, np.ndarray], strict: bool = True) -> None:
        assert self.raw is not None
        try:
            self.raw.load_trainable_state(weights)
        except ValueError as exc:
            raise EngineError(
                f"{exc}; the checkpoint was written for another pretrained model or mode"
            ) from None
