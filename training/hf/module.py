"""A pretrained transformers model behind the training loop's model contract.

`HFTaskModule(x, y) -> (logits, loss)` is what the PyTorch engine drives for its own
GPT, so the engine's AdamW, accumulation, autocast, DDP/FSDP2, clipping and RNG state
apply unchanged. `x` is int64 ids padded with `collate.PAD`; `y` is class indices
([B]) for classification or next-token targets ([B, T], PAD = ignored) for a causal LM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.hf import lora
from training.hf.collate import PAD, attention_inputs
from training.hf.loading import load_model, load_tokenizer
from training.hf.settings import HFSettings
from training.hf.source import ModelSource, resolve_source


class HFTaskModule(nn.Module):
    """One transformers model (optionally LoRA-wrapped) with the (x, y) -> (logits, loss) contract."""

    def __init__(self, model: Any, task: str, pad_token_id: int) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.pad_token_id = int(pad_token_id)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_ids, mask = attention_inputs(x, self.pad_token_id)
        logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        if y is None:
            return logits, None
        if self.task == "classification":
            return logits, F.cross_entropy(logits.float(), y)
        # y holds the next-token targets already (the loop's LMBatch), so no shift here
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=PAD)
        return logits, loss

    # -- what a checkpoint holds ------------------------------------------------------
    def trainable_state(self) -> dict[str, np.ndarray]:
        """Float32 arrays of what training changes: every weight (full) or adapters + head (LoRA).

        LoRA checkpoints stay small (the frozen base is reloaded from `pretrained=` on resume).
        """
        if lora.is_peft(self.model):
            names = {n for n, p in self.model.named_parameters() if p.requires_grad}
            state = {k: v for k, v in self.model.state_dict().items() if k in names}
        else:
            state = self.model.state_dict()
        return {k: v.detach().float().cpu().numpy().copy() for k, v in state.items()}

    def load_trainable_state(self, weights: dict[str, np.ndarray]) -> None:
        """Load what `trainable_state` wrote; a name or shape that does not fit is a ValueError."""
        own = self.model.state_dict()
        expected = set(self.trainable_state_names())
        unexpected = sorted(set(weights) - set(own))
        missing = sorted(expected - set(weights))
        if unexpected or missing:
            raise ValueError(
                f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, arr in weights.items():
                if tuple(arr.shape) != tuple(own[name].shape):
                    raise ValueError(
                        f"weight {name} has shape {arr.shape}, the model wants {tuple(own[name].shape)}"
                    )
                own[name].copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))

    def trainable_state_names(self) -> list[str]:
        if lora.is_peft(self.model):
            return [n for n, p in self.model.named_parameters() if p.requires_grad]
        return list(self.model.state_dict())

    def num_params(self, exclude_position: bool = True) -> int:
        """Trainable parameters (the engine's FLOPs and report figure)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_module(
    settings: HFSettings,
    num_labels: int = 2,
    device_type: str = "cpu",
    source: ModelSource | None = None,
    tokenizer: Any = None,
) -> tuple[HFTaskModule, Any]:
    """Load model (+ tokenizer unless given) for the settings' task; apply LoRA, gradient checkpointing."""
    source = source or resolve_source(settings.model)
    task = settings.resolved_task
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source)
    model, fresh = load_model(source, task, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    if settings.use_grad_checkpointing(device_type):
        # non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if settings.mode == "lora":
        model = lora.apply_lora(model, settings, task, train_in_full=fresh + lora.head_modules(model, task))
    return HFTaskModule(model, task, tokenizer.pad_token_id), tokenizer


def save_for_transformers(module: HFTaskModule, tokenizer: Any, out_dir: Path, merge: bool) -> dict[str, str]:
    """`save_pretrained` of the trained model (and adapter), loadable in plain transformers."""
    return lora.save_pretrained(module.model, tokenizer, out_dir, merge=merge)
