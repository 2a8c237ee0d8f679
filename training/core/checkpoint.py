"""Checkpoints: safetensors weights + a JSON manifest, written atomically.

Layout of one checkpoint (`run_dir/checkpoints/<name>/`):

    model.safetensors   float32 tensors named as in docs/training-contract.md
    manifest.json       format, engine, stage, step, config, seeds, data cursor, world
                        size, metrics, TrainState, and the sha256 of every other file
                        (the keys: training.core.stage.CheckpointManager.save)
    optimizer.pt / ...  engine-specific optimizer + RNG state (written by the engine)

Names: pretraining writes `last`, `best` (and `step-XXXXXXX` when asked);
fine-tuning writes `finetune-last`, `finetune-best`.

Atomicity: everything is written into `<name>.tmp-<pid>/` (manifest last, all
files fsynced), then swapped in by renames. If a process dies between the two
renames, `<name>.old-<pid>/` still holds the previous complete checkpoint and
`find_checkpoint` falls back to it, so `kill -9` at any moment leaves either the
old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from envkit.atomic import atomic_write_text
from envkit.vocab import format_id, is_format

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = format_id("checkpoint", 2)
READABLE_VERSION = 2  # also reads v1, written as "envkit-checkpoint/1" before the stage loop


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the current run."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    """Write name -> array as float32 safetensors (contiguous copies)."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read a model.safetensors (or a checkpoint directory) into name -> float32 array."""
    from safetensors.numpy import load_file

    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise CheckpointError(f"no weights at {p}")
    return load_file(str(p))


def write_checkpoint(
    root: Path,
    name: str,
    weights: dict[str, np.ndarray],
    manifest: dict[str, Any],
    write_state: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `root/name` atomically and return its path.

    `write_state(tmp_dir)` lets the engine add its optimizer/RNG file(s) to the
    same temporary directory before the manifest (with every file's sha256) seals it.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f"{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(tmp / WEIGHTS, weights)
    if write_state is not None:
        write_state(tmp)
    files = {}
    for f in sorted(tmp.iterdir()):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            files[f.name] = sha256_file(f)
    full = {"format": FORMAT, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    full.update(manifest)
    full["files"] = files
    atomic_write_text(
        tmp / MANIFEST, json.dumps(full, indent=2, sort_keys=True, default=_json_default) + "\n"
    )
    _fsync_dir(tmp)
    old = root / f"{name}.old-{os.getpid()}"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_manifest(path: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of checkpoint directory `path`; with `verify`, check every file's sha256."""
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has no readable {MANIFEST}: {exc}") from None
    if not is_format(manifest.get("format"), "checkpoint", READABLE_VERSION):
        raise CheckpointError(
            f"checkpoint {path}: unknown format {manifest.get('format')!r} (this envkit reads "
            f"{FORMAT} and older); upgrade envkit or start a new run_dir"
        )
    if verify:
        for fname, digest in manifest.get("files", {}).items():
            fpath = path / fname
            if not fpath.is_file() or sha256_file(fpath) != digest:
                raise CheckpointError(f"checkpoint {path}: {fname} is missing or does not match its sha256")
    return manifest


def is_valid(path: Path) -> bool:
    try:
        read_manifest(path, verify=True)
    except CheckpointError:
        return False
    return True


def find_checkpoint(root: Path, name: str) -> Path | None:
    """The complete checkpoint `root/name`, or the previous one left by an interrupted swap."""
    final = root / name
    if final.is_dir() and is_valid(final):
        return final
    if root.is_dir():
        olds = sorted(root.glob(f"{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in olds:
            if is_valid(old):
                return old
    return None


def clean_stale(root: Path) -> None:
    """Remove temporary directories that a killed writer left behind, and repair a torn swap."""
    if not root.is_dir():
        return
    for tmp in root.glob("*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob("*.old-*"):
        name = old.name.split(".old-")[0]
        final = root / name
        if not (final.is_dir() and is_valid(final)) and is_valid(old):
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.rename(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"
