"""Tokenizers: a byte-level BPE trained on the corpus, or plain bytes (vocab 256).

Both are `tokenizers.Tokenizer` objects saved as one `tokenizer.json`, so every
engine and every later stage reads the same file. No encoding is downloaded.
Two special tokens follow the byte/merge vocabulary: `<|endoftext|>` (joins
documents) and `<|pad|>` (right padding of classification inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIALS = [EOS, PAD]


def _byte_level_parts():
    from tokenizers import decoders, pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), decoders.ByteLevel()


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE with at most `vocab_size` entries (specials included)."""
    from tokenizers import Tokenizer, models, trainers

    pre, dec = _byte_level_parts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = dec
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 258),
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    return tok


def byte_tokenizer():
    """The 256-byte vocabulary (no merges) plus the two specials."""
    from tokenizers import Tokenizer, models

    pre, dec = _byte_level_parts()
    alphabet = sorted(pre.alphabet())
    vocab = {sym: i for i, sym in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre
    tok.decoder = dec
    tok.add_special_tokens(SPECIALS)
    return tok


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class TextTokenizer:
    """A thin, typed wrapper around a `tokenizers.Tokenizer`."""

    def __init__(self, tok) -> None:
        # user text that happens to contain "<|pad|>" must stay text, never become a control id
        tok.encode_special_tokens = True
        self.tok = tok
        self.eos_id = tok.token_to_id(EOS)
        self.pad_id = tok.token_to_id(PAD)

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        from envkit.atomic import atomic_write_text

        atomic_write_text(Path(path), self.tok.to_str(pretty=False))

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def encode_corpus(self, docs: list[str]) -> np.ndarray:
        """All documents as one id stream, each followed by eos."""
        out: list[int] = []
        for i in range(0, len(docs), 2000):
            for ids in self.encode_batch(docs[i : i + 2000]):
                out.extend(ids)
                out.append(self.eos_id)
        return np.asarray(out, dtype=np.int64)

    def encode_padded(self, texts: list[str], seq_len: int) -> np.ndarray:
        """[N, seq_len] ids, truncated and right-padded with pad_id."""
        arr = np.full((len(texts), seq_len), self.pad_id, dtype=np.int64)
        for i in range(0, len(texts), 2000):
            for j, ids in enumerate(self.encode_batch(texts[i : i + 2000])):
                ids = ids[:seq_len]
                arr[i + j, : len(ids)] = ids
        return arr


def build_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """'bpe' trains on `texts`; 'byte' ignores them."""
    if kind == "byte":
        return TextTokenizer(byte_tokenizer())
    return TextTokenizer(train_bpe(texts, vocab_size))
