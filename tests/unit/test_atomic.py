"""Atomic writes: the old file or the new one, never half of one, and no temporary left behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from envkit import atomic
from envkit.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_create_parents_and_honour_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "r.bin"
    old = os.umask(0o027)
    try:
        assert atomic_write_bytes(target, b"\x00\x01") == target
    finally:
        os.umask(old)
    assert target.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 less the umask, not mkstemp's 0600
    atomic_write_text(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write_json(target, {"path": Path("/x")})
    assert json.loads(target.read_text()) == {"path": "/x"} and target.read_text().endswith("\n")
    atomic_write_bytes(target, b"x", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    target = tmp_path / "r.json"
    atomic_write_text(target, "old\n")

    def failing_fsync(fd: int) -> None:  # the data went to the temp file; the disk refuses it
        raise error

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(type(error)):
        atomic_write_text(target, "new, and longer than the old\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_failing_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        atomic_write_json(tmp_path / "new.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []
