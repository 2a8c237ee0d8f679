"""Readers for the text a run trains on, with errors that name the input.

Unlabelled corpora (`corpus=`): `synthetic`, a text file, a folder of text files
(`*.txt`, recursive), `hf:NAME[:CONFIG]`, or a comma-separated list of these.
A file splits into documents at blank lines (one document per line when it has
almost no blank lines, as WikiText's one-paragraph-a-line files).

Labelled sets (`labelled=`): `synthetic`, a `.tsv`/`.csv` with a header row, a
`.jsonl` file of objects, an aclImdb folder (`train/pos`, `train/neg`,
`test/pos`, `test/neg`), or `hf:NAME[:CONFIG]`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.core import synthetic

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "sentiment", "target")
LOCAL_ALTERNATIVES = (
    "use local files instead: corpus=PATH.txt|FOLDER and labelled=FILE.tsv|.csv|.jsonl or an aclImdb "
    "folder (or the embedded default: corpus=synthetic labelled=synthetic)"
)


class DataError(ValueError):
    """Bad user data: the message names the input and the fix."""


@dataclass
class LabelledSet:
    """Texts + string labels, with the splits the source itself defines (others are None)."""

    name: str
    train: tuple[list[str], list[str]]
    val: tuple[list[str], list[str]] | None = None
    test: tuple[list[str], list[str]] | None = None
    origin: dict[str, str] = field(default_factory=dict)  # split -> where its rows came from


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def _documents(text: str) -> list[str]:
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # files with almost no blank lines (WikiText: one paragraph a line) split per line
    return paragraphs if len(paragraphs) * 4 >= len(lines) else lines


def _hf_unavailable(name: str, reason: str) -> DataError:
    return DataError(f"hf:{name}: {reason}; {LOCAL_ALTERNATIVES}")


def _load_hf(spec: str):
    name, _, config = spec.partition(":")
    if importlib.util.find_spec("datasets") is None:
        raise _hf_unavailable(spec, "the `datasets` library is not installed (pip install datasets)")
    try:
        import datasets

        return datasets.load_dataset(name, config or None)
    except Exception as exc:  # offline, unknown name: any failure is the user's input
        raise _hf_unavailable(
            spec, f"cannot load ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        ) from None


def read_corpus(spec: str, seed: int, synthetic_docs: int) -> list[str]:
    """Documents of an unlabelled corpus spec (see module docstring)."""
    docs: list[str] = []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        if part == "synthetic":
            docs.extend(synthetic.corpus(synthetic_docs, seed))
        elif part.startswith("hf:"):
            ds = _load_hf(part[3:])
            for split in ds.values():
                column = next((c for c in TEXT_COLUMNS if c in split.column_names), None)
                if column is None:
                    raise DataError(f"{part}: no text column (looked for {', '.join(TEXT_COLUMNS)})")
                docs.extend(t for t in split[column] if t and t.strip())
        else:
            path = Path(part)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*.txt") if p.is_file())
                if not files:
                    raise DataError(f"corpus folder {path} has no *.txt files")
                for f in files:
                    docs.extend(_documents(_read_utf8(f)))
            elif path.is_file():
                docs.extend(_documents(_read_utf8(path)))
            else:
                raise DataError(f"corpus {part} does not exist; give a text file, a folder or 'synthetic'")
    if not docs:
        raise DataError(f"corpus {spec} is empty (no non-blank text); point corpus= at text")
    return docs


def _pick_column(name: str, given: str, header: list[str], choices: tuple[str, ...], what: str) -> str:
    if given:
        if given not in header:
            raise DataError(f"{name}: no {what} column {given!r} (columns: {', '.join(header)})")
        return given
    for c in choices:
        if c in header:
            return c
    raise DataError(
        f"{name}: no {what} column (looked for {', '.join(choices)}; columns: {', '.join(header)}); "
        f"set {what}_column="
    )


def read_table(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """(texts, labels) from a TSV/CSV with a header row or a JSONL file."""
    if not path.is_file():
        raise DataError(f"labelled file {path} does not exist")
    content = _read_utf8(path)
    suffix = path.suffix.lower()
    texts: list[str] = []
    labels: list[str] = []
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i} is not a JSON object")
            rows.append((i, row))
        if not rows:
            raise DataError(f"labelled file {path} is empty")
        header = list(rows[0][1].keys())
        tcol = _pick_column(str(path), text_column, header, TEXT_COLUMNS, "text")
        lcol = _pick_column(str(path), label_column, header, LABEL_COLUMNS, "label")
        for i, row in rows:
            if tcol not in row or lcol not in row:
                raise DataError(f"{path}:{i} lacks column {tcol if tcol not in row else lcol!r}")
            texts.append(str(row[tcol]))
            labels.append(str(row[lcol]))
    elif suffix in (".tsv", ".csv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(content.splitlines(), delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise DataError(f"labelled file {path} is empty")
        header = [h.strip() for h in header]
        tcol = _pick_column(str(path), text_column, header, TEXT_COLUMNS, "text")
        lcol = _pick_column(str(path), label_column, header, LABEL_COLUMNS, "label")
        ti, li = header.index(tcol), header.index(lcol)
        for i, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) <= max(ti, li):
                raise DataError(f"{path}:{i} has {len(row)} fields, expected {len(header)}")
            texts.append(row[ti])
            labels.append(row[li].strip())
    else:
        raise DataError(f"labelled file {path}: unknown format {suffix!r}; use .tsv, .csv or .jsonl")
    if not texts:
        raise DataError(f"labelled file {path} has a header but no rows")
    return texts, labels


def _read_imdb_split(folder: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for label in ("neg", "pos"):
        for f in sorted((folder / label).glob("*.txt")):
            texts.append(_read_utf8(f).replace("<br />", " ").strip())
            labels.append(label)
    return texts, labels


def is_imdb(path: Path) -> bool:
    return (path / "train" / "pos").is_dir() and (path / "train" / "neg").is_dir()


def read_labelled(
    cfg_labelled: str, cfg_test: str, text_column: str, label_column: str, seed: int, synthetic_reviews: int
) -> LabelledSet:
    """The labelled set of a config (see module docstring)."""
    spec = cfg_labelled.strip()
    if spec == "synthetic":
        texts, labels = synthetic.sentiment(synthetic_reviews, seed)
        out = LabelledSet("synthetic", (texts, labels), origin={"train": "synthetic"})
    elif spec.startswith("hf:"):
        ds = _load_hf(spec[3:])
        splits = {}
        for key, split in ds.items():
            header = list(split.column_names)
            tcol = _pick_column(spec, text_column, header, TEXT_COLUMNS, "text")
            lcol = _pick_column(spec, label_column, header, LABEL_COLUMNS, "label")
            splits[key] = ([str(t) for t in split[tcol]], [str(v) for v in split[lcol]])
        if "train" not in splits:
            raise DataError(f"{spec} has no train split (splits: {', '.join(splits)})")
        val = splits.get("validation") or splits.get("val")
        test = splits.get("test")
        if test is not None and len(set(test[1])) == 1 and test[1][0] == "-1":
            test = None  # GLUE hides test labels
        out = LabelledSet(spec, splits["train"], val, test, origin={k: spec for k in splits})
    else:
        path = Path(spec)
        if path.is_dir():
            if not is_imdb(path):
                raise DataError(f"labelled folder {path} is not an aclImdb layout (train/pos, train/neg)")
            train = _read_imdb_split(path / "train")
            test = _read_imdb_split(path / "test") if (path / "test" / "pos").is_dir() else None
            out = LabelledSet(f"aclImdb:{path}", train, None, test, origin={"train": str(path / "train")})
            if test:
                out.origin["test"] = str(path / "test")
        elif path.exists():
            out = LabelledSet(
                str(path), read_table(path, text_column, label_column), origin={"train": str(path)}
            )
        else:
            raise DataError(
                f"labelled {spec} does not exist; "
                "give a .tsv/.csv/.jsonl file, an aclImdb folder or 'synthetic'"
            )
    if cfg_test:
        out.test = read_table(Path(cfg_test), text_column, label_column)
        out.origin["test"] = cfg_test
    if not out.train[0]:
        raise DataError(f"labelled {spec} has no training rows")
    return out


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Deterministic disjoint index sets: fractions of n, the rest last (train)."""
    perm = np.random.default_rng([seed, 104729]).permutation(n)
    out, start = [], 0
    for frac in fractions:
        k = round(n * frac)
        out.append(np.sort(perm[start : start + k]))
        start += k
    out.append(np.sort(perm[start:]))
    return out
