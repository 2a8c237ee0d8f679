"""The prepared-data format both engines read, and deterministic samplers over it.

A prepared directory (`run_dir/prepared/` by default) holds:

    meta.json                 format, vocab, special ids, splits, classes (below)
    tokenizer.json            the `tokenizers` file the ids come from
    lm/{train,val,test}-NNNNN.bin   token ids, flat, little-endian uint16 (uint32 when
                                    the vocabulary exceeds 65535); documents joined by eos
    cls/{train,val,test}_ids.npy    [N, seq_len] ids, right-padded with pad_id, truncated
    cls/{train,val,test}_labels.npy [N] int64 class indices into meta["cls"]["classes"]

meta.json:
    {"format": "envkit.prepared/v1", "vocab_size": V, "dtype": "uint16",
     "eos_id": .., "pad_id": .., "tokenizer": "tokenizer.json", "tokenizer_kind": "bpe",
     "lm": {"train": {"shards": ["lm/train-00000.bin", ...], "tokens": N}, "val": .., "test": ..},
     "cls": {"classes": [...], "seq_len": L, "train": {"ids": .., "labels": .., "n": N}, ...},
     "sources": {...}, "seed": S}

Sampling is a pure function of (seed, step, micro-step, rank), so a resumed run
draws exactly the batches the uninterrupted run would have drawn, and each rank
reads its own contiguous part of every shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envkit.vocab import format_id, is_format
from training.engines.base import ClsBatch, LMBatch

FORMAT = format_id("prepared", 1)  # directories from before read too: "envkit-prepared/1"
META = "meta.json"
SHARD_TOKENS = 64 * 1024 * 1024  # ids per shard file
SPLITS = ("train", "val", "test")


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def write_token_shards(root: Path, split: str, ids: np.ndarray, vocab_size: int) -> dict[str, Any]:
    """Write one LM split as flat shards under root/lm; return its meta entry."""
    dtype = id_dtype(vocab_size)
    (root / "lm").mkdir(parents=True, exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, max(len(ids), 1), SHARD_TOKENS)):
        rel = f"lm/{split}-{i:05d}.bin"
        ids[start : start + SHARD_TOKENS].astype(dtype).tofile(root / rel)
        shards.append(rel)
    return {"shards": shards, "tokens": len(ids)}


def write_cls_split(root: Path, split: str, ids: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Write one classification split as two .npy arrays; return its meta entry."""
    (root / "cls").mkdir(parents=True, exist_ok=True)
    ids_rel, labels_rel = f"cls/{split}_ids.npy", f"cls/{split}_labels.npy"
    np.save(root / ids_rel, ids)
    np.save(root / labels_rel, labels.astype(np.int64))
    return {"ids": ids_rel, "labels": labels_rel, "n": len(labels)}


@dataclass
class PreparedData:
    """Read access to a prepared directory."""

    root: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> PreparedData:
        root = Path(root)
        path = root / META
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run `envkit train prepare` first")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not is_format(meta.get("format"), "prepared", 1):
            raise ValueError(f"{path}: unknown prepared-data format {meta.get('format')!r}")
        return cls(root, meta)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("cls", {}).get("classes", []))

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.meta["tokenizer"]

    def lm_shards(self, split: str) -> list[np.ndarray]:
        """Memory-mapped token arrays of one LM split."""
        entry = self.meta["lm"][split]
        dtype = np.dtype(self.meta["dtype"])
        out = []
        for rel in entry["shards"]:
            path = self.root / rel
            if path.stat().st_size:
                out.append(np.memmap(path, dtype=dtype, mode="r"))
        return out

    def lm_tokens(self, split: str) -> int:
        return int(self.meta["lm"][split]["tokens"])

    def cls_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, L], labels [N]) of one classification split, memory-mapped."""
        entry = self.meta["cls"][split]
        ids = np.load(self.root / entry["ids"], mmap_mode="r")
        labels = np.load(self.root / entry["labels"], mmap_mode="r")
        return ids, labels


class LMSampler:
    """Random next-token windows; a pure function of (seed, step, micro, rank)."""

    def __init__(
        self,
        shards: list[np.ndarray],
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.block_size, self.batch_size, self.seed, self.rank = block_size, batch_size, seed, rank
        # each rank owns a contiguous slice of every shard (deterministic, disjoint starts)
        self.parts: list[np.ndarray] = []
        for shard in shards:
            n = len(shard)
            lo, hi = n * rank // world_size, n * (rank + 1) // world_size
            part = shard[lo : min(n, hi + block_size + 1)]
            if len(part) > block_size + 1:
                self.parts.append(part)
        if not self.parts:
            raise ValueError(
                f"the training text has too few tokens for block_size={block_size} "
                f"on {world_size} rank(s); add text or lower block_size"
            )
        lengths = np.array([len(p) - block_size - 1 for p in self.parts], dtype=np.float64)
        self.weights = lengths / lengths.sum()

    def batch(self, step: int, micro: int = 0) -> LMBatch:
        rng = np.random.default_rng([self.seed, step, micro, self.rank])
        which = rng.choice(len(self.parts), size=self.batch_size, p=self.weights)
        x = np.empty((self.batch_size, self.block_size), dtype=np.int64)
        y = np.empty_like(x)
        for row, part_idx in enumerate(which):
            part = self.parts[part_idx]
            start = int(rng.integers(0, len(part) - self.block_size - 1))
            window = np.asarray(part[start : start + self.block_size + 1], dtype=np.int64)
            x[row], y[row] = window[:-1], window[1:]
        return LMBatch(x, y)


def lm_eval_batches(
    shards: list[np.ndarray], block_size: int, batch_size: int, max_batches: int, rank: int, world_size: int
) -> list[LMBatch]:
    """Fixed, evenly spaced windows over a held-out split; batch i goes to rank i % world_size."""
    starts: list[tuple[int, int]] = []
    for si, shard in enumerate(shards):
        starts.extend((si, s) for s in range(0, len(shard) - block_size - 1, block_size))
    if not starts:
        return []
    want = min(len(starts), max_batches * batch_size)
    picks = np.linspace(0, len(starts) - 1, want).astype(np.int64)
    batches = []
    for b, i in enumerate(range(0, want, batch_size)):
        if b % world_size != rank:
            continue
        rows = [starts[j] for j in picks[i : i + batch_size]]
        windows = np.stack([np.asarray(shards[si][s : s + block_size + 1], dtype=np.int64) for si, s in rows])
        batches.append(LMBatch(windows[:, :-1], windows[:, 1:]))
    return batches


class ClsEpochSampler:
    """Shuffled mini-batches per epoch; ranks take interleaved, equal-length slices."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        per_rank = n // world_size
        self.batches_per_epoch = max(1, -(-per_rank // batch_size)) if per_rank else 0

    def indices(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)
        per_rank = self.n // self.world_size
        return perm[self.rank :: self.world_size][:per_rank]

    def batch(
        self, ids: np.ndarray, labels: np.ndarray, epoch: int, index: int, pad_id: int | None = None
    ) -> ClsBatch:
        idx = np.sort(self.indices(epoch)[index * self.batch_size : (index + 1) * self.batch_size])
        rows = trim_padding(np.asarray(ids[idx], dtype=np.int64), pad_id)
        return ClsBatch(rows, np.asarray(labels[idx], dtype=np.int64))


TRIM_MULTIPLE = 16  # few distinct shapes: compiled graphs (torch.compile, XLA) are reused


def trim_padding(ids: np.ndarray, pad_id: int | None, multiple: int = TRIM_MULTIPLE) -> np.ndarray:
    """Drop trailing columns that are padding in every row (kept to a multiple of `multiple`).

    Exact, not an approximation: attention is causal and pooling masks pads, so
    trailing all-pad columns never change a logit; short sentences just cost less.
    """
    if pad_id is None or ids.size == 0:
        return ids
    real = (ids != pad_id).any(axis=0)
    keep = int(np.nonzero(real)[0][-1]) + 1 if real.any() else 1
    keep = min(ids.shape[1], -(-keep // multiple) * multiple)
    return ids[:, :keep]


def cls_eval_batches(
    ids: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    pad_id: int | None = None,
) -> list[ClsBatch]:
    """The whole split in order; batch i goes to rank i % world_size."""
    out = []
    for b, start in enumerate(range(0, len(labels), batch_size)):
        if b % world_size == rank:
            sl = slice(start, start + batch_size)
            rows = trim_padding(np.asarray(ids[sl], dtype=np.int64), pad_id)
            out.append(ClsBatch(rows, np.asarray(labels[sl], dtype=np.int64)))
    return out
