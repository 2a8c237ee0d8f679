"""LoRA through peft: target modules per architecture, adapter and merged saves."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from training.core.config import ConfigError
from training.hf.settings import HFSettings

# The attention projections of each family (the LoRA paper's choice: adapting the attention
# matrices gives most of the gain per parameter). Names are module-name suffixes, as peft matches them.
TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "electra": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "gpt2": ["c_attn", "attn.c_proj"],
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
ADAPTER_DIR, MERGED_DIR = "adapter", "merged"


def target_modules(model_type: str, override: list[str] | None = None) -> list[str]:
    """The module names LoRA adapts for `model_type` (the config's lora_targets win)."""
    if override:
        return list(override)
    if model_type in TARGET_MODULES:
        return list(TARGET_MODULES[model_type])
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise ConfigError(
        f"no LoRA target modules known for model type {model_type!r}; set hf.lora_targets= to the names "
        "of its attention projections (e.g. hf.lora_targets=q_proj,v_proj)"
    )


def apply_lora(model: Any, settings: HFSettings, task: str, train_in_full: list[str] | None = None) -> Any:
    """Wrap `model` in a peft LoRA model; only the adapters and the `train_in_full` modules train.

    `train_in_full` names modules the checkpoint did not initialise (a new head, a pooler):
    frozen random weights would sit between the adapters and the loss.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    targets = target_modules(model.config.model_type, settings.lora_targets)
    modules = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        raise ConfigError(
            f"hf.lora_targets: {', '.join(missing)} name no module of this {model.config.model_type} model; "
            "use names of its Linear layers (e.g. query,value or q_proj,v_proj)"
        )
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        # GPT-2 keeps its projections as Conv1D ([in, out]); peft must know to transpose
        fan_in_fan_out=model.config.model_type == "gpt2",
        modules_to_save=list(train_in_full or []) or None,
    )
    return get_peft_model(model, config)


def head_modules(model: Any, task: str) -> list[str]:
    """Modules between the encoder and a classifier that LoRA trains in full: BERT's pooler.

    BertForSequenceClassification reads the [CLS] vector through `pooler` (a dense layer
    pretrained for next-sentence prediction, or never tuned at all in sentence-embedding
    checkpoints that mean-pool); frozen, it caps what the adapters can reach.
    """
    if task != "classification":
        return []
    return [name for name, _ in model.named_modules() if name.endswith("pooler") and name.count(".") <= 1]


def is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_pretrained(model: Any, tokenizer: Any, out_dir: Path, merge: bool = True) -> dict[str, str]:
    """Save for plain transformers: the model (full) or the adapter + a merged copy (LoRA).

    Returns {"model"| "adapter" | "merged": directory}. Written into `<dir>.tmp` first and
    renamed, so a crash never leaves a half-written model directory.
    """
    out: dict[str, str] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        _atomic_save(model, tokenizer, out_dir / ADAPTER_DIR)
        out["adapter"] = str(out_dir / ADAPTER_DIR)
        if merge:
            # merge into a copy: the live model keeps its adapters (a later stage may go on training)
            merged = copy.deepcopy(model).merge_and_unload()
            _atomic_save(merged, tokenizer, out_dir / MERGED_DIR)
            out["merged"] = str(out_dir / MERGED_DIR)
    else:
        _atomic_save(model, tokenizer, out_dir / MERGED_DIR)
        out["model"] = str(out_dir / MERGED_DIR)
    return out


def _atomic_save(model: Any, tokenizer: Any, final: Path) -> None:
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
