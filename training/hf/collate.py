"""The data readers' rows as token ids of the model's own tokenizer.

Classification rows become one int64 matrix [N, max_len] whose padding is `PAD = -1`
(not the tokenizer's pad id): the attention mask is then exact even for decoder
models that pad with their eos token, and the loop's samplers and `trim_padding`
work on it unchanged (they take the pad id as an argument). Unlabelled documents
become one flat id stream joined by the eos token, which the loop's `LMSampler`
cuts into windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PAD = -1  # padding in the id matrices; `HFTaskModule` turns it into mask=0 and the tokenizer's pad id
ENCODE_CHUNK = 4096  # rows per tokenizer call: bounded memory on big sets


def encode_rows(tokenizer: Any, texts: list[str], max_len: int) -> np.ndarray:
    """Tokenize `texts` (special tokens included, truncated to `max_len`) into [N, max_len], PAD-filled."""
    out = np.full((len(texts), max_len), PAD, dtype=np.int64)
    for start in range(0, len(texts), ENCODE_CHUNK):
        chunk = texts[start : start + ENCODE_CHUNK]
        enc = tokenizer(chunk, truncation=True, max_length=max_len, padding=False)
        for row, ids in enumerate(enc["input_ids"], start):
            out[row, : len(ids)] = ids
    return out


def encode_corpus(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """Documents as one flat id stream, each followed by the eos token (as the GPT's corpus)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        eos = tokenizer.sep_token_id
    pieces: list[np.ndarray] = []
    for start in range(0, len(docs), ENCODE_CHUNK):
        enc = tokenizer(docs[start : start + ENCODE_CHUNK], add_special_tokens=False)
        for ids in enc["input_ids"]:
            pieces.append(np.asarray([*ids, eos] if eos is not None else ids, dtype=np.int64))
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(pieces)


def attention_inputs(ids: Any, pad_token_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) for a torch id tensor that pads with PAD."""
    mask = ids.ne(PAD)
    return ids.masked_fill(~mask, pad_token_id), mask.long()
