"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The one implementation every area uses (bench results, doctor reports, training
checkpoints and manifests, image locks).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file in the same directory, fsync and rename.

    The temporary file is removed if anything fails (a full disk, an interrupt), so a
    failed write leaves neither a partial target nor a stray temporary behind. `mode`
    defaults to what a plain `open()` would give (0666 less the umask): mkstemp's 0600
    would make results unreadable to the group that shares a run directory.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write `obj` as JSON (a trailing newline; non-JSON values through `str`)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")
