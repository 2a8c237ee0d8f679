"""The `hf` section of a run's config: which pretrained model, which task, full or LoRA.

Written as `pretrained=DIR_OR_ID` (the model) plus `hf.KEY=VALUE` (or an `hf:` mapping
in a config file). Nothing here imports a framework.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Learning rates that fine-tune without wrecking pretrained weights: full fine-tuning
# moves every weight, so it needs a rate ~20x below LoRA's (which moves only the adapters).
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3}


class HFSettings(BaseModel):
    """Fine-tuning a pretrained Hugging Face model (empty `model` = the project's own GPT)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        "", description="pretrained model: a directory (config.json, weights, tokenizer) or a hub id"
    )
    task: Literal["auto", "classification", "causal_lm"] = Field(
        "auto", description="classification | causal_lm; auto = classification"
    )
    mode: Literal["full", "lora"] = Field("full", description="full (every weight) | lora (peft adapters)")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale (alpha / r multiplies the update)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_targets: list[str] = Field(
        default_factory=list, description="modules LoRA adapts (comma list); [] = per architecture"
    )
    merge: bool = Field(True, description="also save the LoRA weights merged into the base model")
    max_len: int = Field(128, ge=8, description="tokens per example (classification) or window (causal LM)")
    lr: float = Field(0.0, ge=0.0, description="peak learning rate; 0 = 5e-5 (full) or 1e-3 (lora)")
    grad_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="activation checkpointing: auto = on for GPUs, off on the CPU"
    )

    @field_validator("lora_targets", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.model.strip())

    @property
    def resolved_task(self) -> str:
        return "classification" if self.task == "auto" else self.task

    @property
    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.mode]

    def use_grad_checkpointing(self, device_type: str) -> bool:
        if self.grad_checkpointing == "auto":
            return device_type == "cuda"
        return self.grad_checkpointing == "on"
