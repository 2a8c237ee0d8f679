"""Small random causal LMs written in Hugging Face format (tests and benchmarks; no download).

No package ships GPT-2 or Llama weights, so the causal-LM path is exercised on a model
that this module writes: a `transformers` config, random weights (`save_pretrained`)
and a tokenizer trained here with the project's byte-level BPE, wrapped as a
`PreTrainedTokenizerFast`. The directory then loads like any downloaded checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHES = ("llama", "gpt2")


def random_config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, context: int) -> Any:
    """A transformers config of `arch` with the given shape (Llama: SwiGLU MLP of ~8/3 width)."""
    from transformers import GPT2Config, LlamaConfig

    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=max(8, (hidden * 8 // 3 + 7) // 8 * 8),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=context,
            tie_word_embeddings=False,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=context
        )
    raise ValueError(f"unknown arch {arch!r}; one of {ARCHES}")


def write_random_model(
    out_dir: str | Path,
    texts: list[str],
    arch: str = "llama",
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    context: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random `arch` model + a BPE tokenizer trained on `texts` to `out_dir`; return it."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from training.core.tokenizer import EOS, PAD, train_bpe

    out = Path(out_dir)
    tok = PreTrainedTokenizerFast(tokenizer_object=train_bpe(texts, vocab_size), eos_token=EOS, pad_token=PAD)
    config = random_config(arch, len(tok), hidden, layers, heads, context)
    config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
