"""`prepare`: read and check every input, train the tokenizer, write the prepared directory.

All reading and validation happens before anything is created, so a bad input
leaves the run directory untouched. The prepared directory is built under a
temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.core.config import TrainConfig, save_config
from training.core.data import FORMAT, META, PreparedData, id_dtype, write_cls_split, write_token_shards
from training.core.readers import DataError, read_corpus, read_labelled, split_indices
from training.core.tokenizer import build_tokenizer

DATA_KEYS = (
    "corpus",
    "labelled",
    "labelled_test",
    "text_column",
    "label_column",
    "classes",
    "pretrain_on_labelled",
    "synthetic_docs",
    "synthetic_reviews",
    "val_fraction",
    "test_fraction",
    "tokenizer",
    "seed",
)


@dataclass
class Sources:
    """Everything read from the inputs, validated, before any file is written."""

    lm: dict[str, list[str]]
    cls: dict[str, tuple[list[str], list[int]]]
    classes: list[str]
    names: dict[str, Any]


def data_fingerprint(cfg: TrainConfig) -> str:
    """Hash of the config keys that decide the prepared data."""
    keys = {k: getattr(cfg, k) for k in DATA_KEYS}
    keys.update(vocab_size=cfg.model.vocab_size, seq_len=cfg.seq_len)
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _sort_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=lambda s: float(s))
    except ValueError:
        return sorted(labels)


def load_sources(cfg: TrainConfig) -> Sources:
    """Read and validate the corpus and the labelled set (writes nothing)."""
    docs = read_corpus(cfg.data.corpus, cfg.runtime.seed, cfg.data.synthetic_docs)
    labelled = read_labelled(
        cfg.data.labelled,
        cfg.data.labelled_test,
        cfg.data.text_column,
        cfg.data.label_column,
        cfg.runtime.seed,
        cfg.data.synthetic_reviews,
    )
    # labelled splits: keep the source's own, carve the missing ones from train
    train_t, train_l = labelled.train
    carve = [
        f
        for f, have in ((cfg.data.val_fraction, labelled.val), (cfg.data.test_fraction, labelled.test))
        if not have
    ]
    idx = split_indices(len(train_t), tuple(carve), cfg.runtime.seed)
    parts = iter(idx[:-1])
    take = lambda ix: ([train_t[i] for i in ix], [train_l[i] for i in ix])  # noqa: E731
    val = labelled.val or take(next(parts))
    test = labelled.test or take(next(parts))
    train = take(idx[-1])
    classes = list(cfg.data.classes) or _sort_labels(set(train[1]))
    if len(classes) < 2:
        raise DataError(
            f"labelled {labelled.name} has a single class {classes}; a classifier needs two or more"
        )
    index = {c: i for i, c in enumerate(classes)}
    cls: dict[str, tuple[list[str], list[int]]] = {}
    for split, (texts, labels) in (("train", train), ("val", val), ("test", test)):
        for label in labels:
            if label not in index:
                where = labelled.origin.get(split, labelled.origin.get("train", labelled.name))
                raise DataError(
                    f"label {label!r} in {where} is not one of the classes {classes}; "
                    "fix the data or set classes="
                )
        cls[split] = (texts, [index[v] for v in labels])
    if not cls["train"][0]:
        raise DataError(f"labelled {labelled.name}: no rows left for training after the val/test splits")
    _check_split_sizes(
        labelled.name, cls, classes, {"val": cfg.data.val_fraction, "test": cfg.data.test_fraction}
    )
    # LM splits by document
    lm_idx = split_indices(len(docs), (cfg.data.val_fraction, cfg.data.test_fraction), cfg.runtime.seed)
    lm = {name: [docs[i] for i in ix] for name, ix in zip(("val", "test", "train"), lm_idx, strict=True)}
    if cfg.data.pretrain_on_labelled:
        lm["train"] = lm["train"] + cls["train"][0]
    names = {"corpus": cfg.data.corpus, "labelled": labelled.name, "labelled_origin": labelled.origin}
    return Sources(lm, cls, classes, names)


MIN_ROWS_PER_CLASS = 1  # in each split: a split without some class cannot score it


def _check_split_sizes(
    name: str, cls: dict[str, tuple[list[str], list[int]]], classes: list[str], fractions: dict[str, float]
) -> None:
    """Refuse a labelled set too small to give every split at least one row of each class."""
    short = {}
    counts = {}
    for split, (_, labels) in cls.items():
        if split != "train" and not labels and fractions.get(split, 0.0) == 0.0:
            continue  # the user asked for no such split (fraction 0 and no file of its own)
        per = [labels.count(i) for i in range(len(classes))]
        counts[split] = per
        if min(per) < MIN_ROWS_PER_CLASS:
            short[split] = per
    if short:
        described = "; ".join(
            f"{split} " + ", ".join(f"{c}={n}" for c, n in zip(classes, per, strict=True))
            for split, per in counts.items()
        )
        raise DataError(
            f"labelled {name} is too small to split: rows per class are {described}, and every split "
            f"needs at least {MIN_ROWS_PER_CLASS} row of each class; add labelled rows, give val/test "
            "files of their own, or lower val_fraction/test_fraction (0 = no such split)"
        )


@dataclass
class PrepareResult:
    prepared_dir: str
    tokenizer: str
    vocab_size: int
    classes: list[str]
    lm_tokens: dict[str, int]
    cls_rows: dict[str, int]
    seconds: float
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_prepared(cfg: TrainConfig) -> bool:
    """True when the prepared directory exists and was made from this config's data keys."""
    try:
        data = PreparedData.open(cfg.prepared_path())
    except (FileNotFoundError, ValueError):
        return False
    return data.meta.get("fingerprint") == data_fingerprint(cfg)


def open_prepared(cfg: TrainConfig) -> PreparedData:
    """The prepared data of a run, fitted to the config (or a DataError naming the fix)."""
    try:
        data = PreparedData.open(cfg.prepared_path())
    except FileNotFoundError:
        raise DataError(
            f"{cfg.prepared_path()} has no prepared data; "
            "run `envkit train prepare` with the same run_dir first"
        ) from None
    resolve_for_data(cfg, data.meta)
    if data.meta["cls"]["seq_len"] > cfg.model.block_size:
        raise DataError(
            f"prepared sequences are {data.meta['cls']['seq_len']} tokens, longer than the model's "
            f"context block_size={cfg.model.block_size}"
        )
    return data


def resolve_for_data(cfg: TrainConfig, meta: dict[str, Any]) -> None:
    """Fit the config to prepared data: class count; refuse a vocabulary that does not fit."""
    cfg.model.n_classes = len(meta["cls"]["classes"])
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise DataError(
            f"the prepared data has {meta['vocab_size']} token ids but model.vocab_size="
            f"{cfg.model.vocab_size}; raise vocab_size or prepare again"
        )


def prepare(cfg: TrainConfig, sources: Sources | None = None) -> PrepareResult:
    """Read, validate, tokenize and write the prepared directory; save config.json + tokenizer.json."""
    t0 = time.perf_counter()
    if cfg.runtime.resume == "auto" and is_prepared(cfg):
        data = PreparedData.open(cfg.prepared_path())
        resolve_for_data(cfg, data.meta)
        save_config(cfg, Path(cfg.runtime.run_dir) / "config.json")
        return PrepareResult(
            str(data.root),
            data.meta["tokenizer_kind"],
            data.vocab_size,
            data.classes,
            {s: data.lm_tokens(s) for s in ("train", "val", "test")},
            {s: int(data.meta["cls"][s]["n"]) for s in ("train", "val", "test")},
            time.perf_counter() - t0,
            reused=True,
        )
    src = sources or load_sources(cfg)
    tok = build_tokenizer(cfg.data.tokenizer, src.lm["train"] + src.cls["train"][0], cfg.model.vocab_size)
    if tok.vocab_size > cfg.model.vocab_size:
        raise DataError(f"tokenizer has {tok.vocab_size} ids but model.vocab_size={cfg.model.vocab_size}")
    lm_ids = {split: tok.encode_corpus(docs) for split, docs in src.lm.items()}
    need = cfg.model.block_size + 2
    if len(lm_ids["train"]) < need:
        raise DataError(
            f"corpus {cfg.data.corpus} gives {len(lm_ids['train'])} training tokens, fewer than "
            f"block_size+2={need}; add text or lower block_size"
        )
    cls_ids = {
        split: (tok.encode_padded(t, cfg.seq_len), np.asarray(lab)) for split, (t, lab) in src.cls.items()
    }

    final = cfg.prepared_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tok.save(tmp / "tokenizer.json")
    dtype = id_dtype(tok.vocab_size)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "tokenizer": "tokenizer.json",
        "tokenizer_kind": cfg.data.tokenizer,
        "lm": {s: write_token_shards(tmp, s, ids, tok.vocab_size) for s, ids in lm_ids.items()},
        "cls": {"classes": src.classes, "seq_len": cfg.seq_len},
        "sources": src.names,
        "seed": cfg.runtime.seed,
        "fingerprint": data_fingerprint(cfg),
    }
    for split, (ids, labels) in cls_ids.items():
        meta["cls"][split] = write_cls_split(tmp, split, ids.astype(dtype), labels)
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    run_dir = Path(cfg.runtime.run_dir)
    resolve_for_data(cfg, meta)
    save_config(cfg, run_dir / "config.json")
    tok.save(run_dir / "tokenizer.json")
    return PrepareResult(
        str(final),
        cfg.data.tokenizer,
        tok.vocab_size,
        src.classes,
        {s: len(v) for s, v in lm_ids.items()},
        {s: len(v[1]) for s, v in cls_ids.items()},
        time.perf_counter() - t0,
    )
