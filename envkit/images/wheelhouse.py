"""The offline wheelhouse: every wheel an image needs, downloaded on the host.

The host's pip already knows the way to the wheels (its certificate, proxy,
find-links and index settings); a build container knows none of it, and plain
PyPI would hand it the multi-GB CUDA build of torch. So `pip download` runs
here, once per set of requirements, and the image build reads the directory
with `--no-index` (an air-gapped build). A stamp file per requirement set
makes the second call free.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from envkit.matrix import ImageRow

# Build backend of envkit's own wheel (built inside the image from the source).
BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")
PYPI = "https://pypi.org/simple"


class WheelhouseError(RuntimeError):
    """pip could not download the wheels."""


def project_requirements(pyproject: Path, extras: tuple[str, ...] = ("train",)) -> list[str]:
    """envkit's base dependencies plus the named extras (self-references dropped)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        reqs += [r for r in optional.get(extra, []) if not r.startswith(project["name"])]
    return reqs


def framework_requirement(row: ImageRow) -> str:
    """'torch==2.13.0', 'tensorflow[and-cuda]==2.21.0': the row's pin."""
    return f"{row.package}=={row.version}"


def host_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def index_reachable(url: str, timeout: float = 5.0) -> bool:
    """True when the wheel index answers; pip would otherwise retry it for minutes."""
    import os
    import ssl
    import urllib.request

    cert = os.environ.get("PIP_CERT")
    context = ssl.create_default_context(cafile=cert if cert and Path(cert).is_file() else None)
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=timeout, context=context) as resp:
            return bool(resp.status < 500)
    except (OSError, ValueError):
        return False


def download_command(
    rows: list[ImageRow], pyproject: Path, dest: Path, python: str, indexes: list[str] | None = None
) -> list[str]:
    """The `pip download` for the rows of one Python version (`indexes`: extra wheel indexes)."""
    reqs = project_requirements(pyproject) + [framework_requirement(r) for r in rows]
    reqs += list(BUILD_REQUIREMENTS)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest)]
    if python != host_python():
        # Wheels for another interpreter (CUDA rows on Ubuntu 24.04 run 3.12):
        # pip can only pick them by tag, never build them.
        cmd += ["--python-version", python, "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64"]
        cmd += ["--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64"]
    for index in indexes if indexes is not None else row_indexes(rows):
        cmd += ["--extra-index-url", index]
    return cmd + sorted(set(reqs))


def row_indexes(rows: list[ImageRow]) -> list[str]:
    """The rows' wheel indexes other than PyPI (pip's own configuration covers PyPI)."""
    return sorted({r.wheel_index for r in rows if r.wheel_index.rstrip("/") != PYPI})


def stamp_path(dest: Path, command: list[str]) -> Path:
    digest = hashlib.sha256("\0".join(command[1:]).encode()).hexdigest()[:16]
    return dest / f".envkit-wheelhouse-{digest}"


def ensure_wheelhouse(
    rows: list[ImageRow],
    pyproject: Path,
    dest: Path,
    on_line: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download what `rows` need into `dest` unless already done; return the wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    by_python: dict[str, list[ImageRow]] = {}
    for row in rows:
        by_python.setdefault(row.python, []).append(row)
    for python, group in sorted(by_python.items()):
        indexes = []
        for index in row_indexes(group):
            if index_reachable(index):
                indexes.append(index)
            elif on_line:
                # e.g. PyTorch's CPU index behind a firewall: pip's own find-links/index
                # settings (here /opt/wheels) must then provide the framework wheel.
                on_line(f"wheel index {index} does not answer; using pip's own configuration")
        cmd = download_command(group, pyproject, dest, python, indexes)
        stamp = stamp_path(dest, cmd)
        if stamp.exists():
            continue
        if on_line:
            on_line(f"pip download for Python {python}: {', '.join(r.key for r in group)}")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise WheelhouseError(f"pip download into {dest} failed: {' | '.join(tail)}")
        stamp.write_text("\n".join(cmd) + "\n", encoding="utf-8")
    return sorted(dest.glob("*.whl"))
