"""Load a pretrained model and its own tokenizer with transformers (no hand-written model code)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from training.hf.source import ModelSource, PretrainedNotFound

TASKS = ("classification", "causal_lm")


@contextlib.contextmanager
def _quiet():
    """transformers prints load reports (newly initialised heads) to stdout/stderr; keep them in the log."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars: noise in a run's log
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(level)


def _kwargs(source: ModelSource) -> dict[str, Any]:
    return {"local_files_only": source.local_files_only}


def _not_loadable(source: ModelSource, what: str, exc: Exception) -> PretrainedNotFound:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return PretrainedNotFound(
        f"pretrained={source.spec}: cannot load its {what} ({type(exc).__name__}: {first}); "
        "give a complete Hugging Face model directory (config.json, model.safetensors, tokenizer files)"
    )


def load_tokenizer(source: ModelSource) -> Any:
    """The model's own tokenizer; a causal LM without a pad token pads with its eos token."""
    from transformers import AutoTokenizer

    try:
        with _quiet():
            tok = AutoTokenizer.from_pretrained(source.location, **_kwargs(source))
    except (OSError, ValueError, KeyError) as exc:
        raise _not_loadable(source, "tokenizer", exc) from None
    if tok.pad_token_id is None:
        if tok.eos_token is None:
            raise PretrainedNotFound(
                f"pretrained={source.spec}: the tokenizer has neither a pad nor an eos token; "
                "add one to its tokenizer_config.json"
            )
        tok.pad_token = tok.eos_token  # padding is masked out, so which id pads does not matter
    return tok


def load_model(
    source: ModelSource, task: str, num_labels: int = 2, pad_token_id: int | None = None
) -> tuple[Any, list[str]]:
    """AutoModelForSequenceClassification (a fresh head of `num_labels`) or AutoModelForCausalLM, float32.

    Also returns the modules the checkpoint did not initialise (the new head, and e.g. the
    BERT pooler of a sentence-embedding checkpoint): LoRA must train them, not freeze noise.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {TASKS}")
    kwargs: dict[str, Any] = {**_kwargs(source), "dtype": torch.float32, "output_loading_info": True}
    try:
        with _quiet():
            if task == "classification":
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    source.location, num_labels=num_labels, **kwargs
                )
            else:
                model, info = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _not_loadable(source, "weights", exc) from None
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        # sequence classification pools the last non-pad token of decoder models: it must know the pad id
        model.config.pad_token_id = pad_token_id
    fresh = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", ())})
    return model, fresh


def describe(model: Any) -> dict[str, Any]:
    """Architecture facts for the report: type, parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "model_type": getattr(model.config, "model_type", "?"),
        "architecture": type(model).__name__,
        "params": int(total),
        "trainable_params": int(trainable),
    }
