"""The offline wheelhouse: every wheel an image needs, downloaded on the host.

CPU rows: the host's pip already knows the way to the wheels (its certificate,
proxy, find-links and index settings); a build container knows none of it, and
plain PyPI would hand it the multi-GB CUDA build of torch. So `pip download`
runs here, once per set of requirements, into ./wheelhouse, and the image
build reads the directory with `--no-index` (an air-gapped build). A stamp
file per requirement set makes the second call free.

CUDA rows: the CUDA libraries come from the frameworks' own wheels on PyPI
(torch's default Linux wheel with its nvidia-*/cuda-toolkit dependencies,
tensorflow[and-cuda]). Their version ranges drift, so the resolution is frozen
in a hashed lock per row, Dockerfiles/locks/<row>.txt, which the build installs
with `--require-hashes`. The resolution runs `pip --isolated` (this host's pip
configuration pins the CPU torch) against PyPI, and the wheels of the lock go
to ./wheelhouse/<row>/ so a CPU build never carries them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from envkit.atomic import atomic_write_text
from envkit.matrix import ImageRow
from envkit.process import run_process

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
    *,
    relock: bool = False,
) -> list[Path]:
    """Download what `rows` need into `dest` unless already done; return the wheels.

    Locked (CUDA) rows first get their lock (kept while its inputs are unchanged,
    resolved again with `relock`), then exactly its wheels in `dest/<row>/`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    locked: list[Path] = []
    for row in rows:
        if uses_lock(row):
            lock = ensure_lock(row, pyproject, pyproject.parent, relock=relock, on_line=on_line)
            locked += ensure_locked_wheels(row, lock, dest, on_line, context=pyproject.parent)
    by_python: dict[str, list[ImageRow]] = {}
    for row in rows:
        if not uses_lock(row):
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
    return sorted(dest.glob("*.whl")) + locked


# -- CUDA rows: a hashed lock per row, wheels in their own directory ------------

# What a cuda-devel row adds to its framework's CUDA wheels: nvcc, the CUDA C++
# core library headers and the compiler runtime headers, at the toolkit version
# the framework pins (cuda-toolkit is torch's own dependency).
DEVEL_EXTRAS: dict[str, tuple[str, ...]] = {"pytorch": ("cuda-toolkit[nvcc,cccl,crt]",)}
RESOLVE_TIMEOUT_S = 900.0
DOWNLOAD_TIMEOUT_S = 3600.0
_LOCK_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+) --hash=sha256:([0-9a-f]{64})\s+#\s+(\S+\.whl)\s*$")


@dataclass(frozen=True)
class LockEntry:
    name: str
    version: str
    sha256: str
    filename: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}  # {self.filename}"


@dataclass(frozen=True)
class Lock:
    """A row's frozen resolution: every wheel, with its hash and file name."""

    row_key: str
    inputs_digest: str
    entries: tuple[LockEntry, ...]

    def get(self, name: str) -> LockEntry | None:
        norm = normalize(name)
        return next((e for e in self.entries if normalize(e.name) == norm), None)

    def cuda_entries(self) -> list[LockEntry]:
        """The nvidia-* and cuda-* wheels: the CUDA libraries the image ships."""
        return [e for e in self.entries if normalize(e.name).startswith(("nvidia-", "cuda-"))]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def uses_lock(row: ImageRow) -> bool:
    """CUDA rows install a lock; CPU rows resolve through the host's pip configuration."""
    return row.cuda is not None


def lock_dir(context: Path) -> Path:
    return context / "Dockerfiles" / "locks"


def lock_path(row: ImageRow, context: Path) -> Path:
    return lock_dir(context) / f"{row.key}.txt"


def wheel_set(row: ImageRow) -> str:
    """The wheel set a locked row shares: cuda and cuda-devel of one framework share one.

    One directory (and so one build-cache key) for both rows lets the devel image
    reuse the cuda image's multi-GB dependency layer and add only nvcc and headers.
    """
    return f"{row.name}-cuda"


def base_lock_name(row: ImageRow) -> str:
    """The lock of the dependency layer: the cuda row's, also for cuda-devel (which adds its own)."""
    return f"{wheel_set(row)}.txt"


def wheel_set_dir(row: ImageRow, house: Path) -> Path:
    """Where a row's wheels live: ./wheelhouse for CPU rows, ./wheelhouse/<set> for locked rows."""
    return house / wheel_set(row) if uses_lock(row) else house


def lock_requirements(row: ImageRow, pyproject: Path) -> list[str]:
    """What a locked row resolves: envkit's requirements, the framework pin, devel extras, build backend."""
    reqs = [*project_requirements(pyproject), framework_requirement(row)]
    if row.variant == "cuda-devel":
        reqs += list(DEVEL_EXTRAS.get(row.framework, ()))
    return sorted({*reqs, *BUILD_REQUIREMENTS})


def inputs_digest(row: ImageRow, reqs: list[str]) -> str:
    """Changes when anything the resolution depends on changes (then the lock is stale)."""
    text = "\n".join([row.key, row.python, row.wheel_index, *reqs])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_lock(path: Path) -> Lock | None:
    """The lock at `path`, or None when there is none; a malformed lock raises WheelhouseError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    digest = ""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("# inputs:"):
            digest = line.split(":", 1)[1].strip()
            continue
        if not line or line.startswith("#"):
            continue
        match = _LOCK_LINE.match(line)
        if not match:
            raise WheelhouseError(
                f"{path}:{number} is not `name==version --hash=sha256:... # file.whl`; "
                "rewrite it with `envkit images wheelhouse`"
            )
        entries.append(LockEntry(*match.groups()))
    return Lock(path.stem, digest, tuple(entries))


def default_cert() -> str | None:
    """The CA bundle pip should trust: $PIP_CERT, else the system bundle (`--isolated` drops pip's own)."""
    for cand in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if cand and Path(cand).is_file():
            return cand
    return None


def isolated_pip(python: str) -> list[str]:
    """pip ignoring this host's configuration (find-links and constraints that force the CPU torch)."""
    cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]
    cert = default_cert()
    if cert:
        cmd += ["--cert", cert]
    return cmd


def target_flags(python: str) -> list[str]:
    if python == host_python():
        return []
    return [
        "--python-version",
        python,
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "linux_x86_64",
    ]


def resolve_lock(row: ImageRow, pyproject: Path) -> Lock:
    """Resolve the row on its index (PyPI) with pip's resolver, without installing anything."""
    reqs = lock_requirements(row, pyproject)
    with tempfile.TemporaryDirectory(prefix="envkit-lock-") as tmp:
        report = Path(tmp) / "report.json"
        constraints: list[str] = []
        base = read_lock(lock_dir(pyproject.parent) / base_lock_name(row))
        if base is not None and base.row_key != row.key:
            # cuda-devel adds nvcc and headers to the cuda row's resolution, never moves it:
            # the dependency layer both images share installs the cuda row's lock.
            pins = Path(tmp) / "constraints.txt"
            pins.write_text("".join(f"{e.name}=={e.version}\n" for e in base.entries), encoding="utf-8")
            constraints = ["--constraint", str(pins)]
        cmd = [
            *isolated_pip(row.python),
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--index-url",
            row.wheel_index,
            *target_flags(row.python),
            *constraints,
            *reqs,
        ]
        result = run_process(cmd, timeout_s=RESOLVE_TIMEOUT_S)
        if not result.ok or not report.is_file():
            why = "timed out" if result.timed_out else result.tail(3)
            raise WheelhouseError(f"resolving {row.key} on {row.wheel_index} failed: {why}")
        data = json.loads(report.read_text(encoding="utf-8"))
    entries = []
    for item in data.get("install", []):
        info = item.get("download_info", {})
        sha = info.get("archive_info", {}).get("hashes", {}).get("sha256")
        filename = info.get("url", "").rsplit("/", 1)[-1]
        if not sha or not filename.endswith(".whl"):
            raise WheelhouseError(
                f"resolving {row.key}: {item['metadata']['name']} has no wheel with a sha256 "
                f"({filename or 'no file'}); a lock holds wheels only"
            )
        entries.append(LockEntry(item["metadata"]["name"], item["metadata"]["version"], sha, filename))
    entries.sort(key=lambda e: normalize(e.name))
    return Lock(row.key, inputs_digest(row, reqs), tuple(entries))


def write_lock(row: ImageRow, lock: Lock, path: Path) -> None:
    header = [
        f"# envkit image lock for {row.key}: {framework_requirement(row)}, "
        f"Python {row.python}, linux x86_64.",
        f"# Resolved on {row.wheel_index} on {datetime.now(UTC):%Y-%m-%d} by `envkit images wheelhouse "
        f"{row.name} --variant {row.variant}`;",
        "# the image build installs exactly these wheels (pip --require-hashes --no-deps).",
        "# Re-run that command (with --relock) to move the pins; review the diff.",
        f"# inputs: {lock.inputs_digest}",
    ]
    atomic_write_text(path, "\n".join([*header, *(e.line() for e in lock.entries)]) + "\n")


def ensure_lock(
    row: ImageRow,
    pyproject: Path,
    context: Path,
    *,
    relock: bool = False,
    on_line: Callable[[str], None] | None = None,
) -> Lock:
    """The row's lock: kept while its inputs are unchanged, else resolved again and written."""
    path = lock_path(row, context)
    current = read_lock(path)
    digest = inputs_digest(row, lock_requirements(row, pyproject))
    if current is not None and not relock and current.inputs_digest == digest:
        return current
    if on_line:
        why = "asked to relock" if relock else ("inputs changed" if current else "no lock yet")
        on_line(f"resolving {row.key} on {row.wheel_index} ({why})")
    lock = resolve_lock(row, pyproject)
    write_lock(row, lock, path)
    return lock


def check_lock(row: ImageRow, pyproject: Path, context: Path) -> Lock:
    """The row's lock, which must exist and match its inputs (an --online build resolves nothing)."""
    path = lock_path(row, context)
    lock = read_lock(path)
    digest = inputs_digest(row, lock_requirements(row, pyproject))
    if lock is None or lock.inputs_digest != digest:
        state = "is missing" if lock is None else "is stale (pyproject.toml or the matrix row changed)"
        raise WheelhouseError(
            f"lock {path} {state}; write it with "
            f"`envkit images wheelhouse {row.name} --variant {row.variant}`"
        )
    return lock


def _stamp(lock: Lock) -> str:
    return hashlib.sha256("\n".join(e.line() for e in lock.entries).encode()).hexdigest()[:16]


def ensure_locked_wheels(
    row: ImageRow,
    lock: Lock,
    house: Path,
    on_line: Callable[[str], None] | None = None,
    *,
    context: Path | None = None,
) -> list[Path]:
    """Fill ./wheelhouse/<set>/ with the wheels of the set's locks (hard links from siblings first).

    `context` is the checkout whose Dockerfiles/locks/ holds the set's other locks.
    """
    dest = wheel_set_dir(row, house)
    dest.mkdir(parents=True, exist_ok=True)
    # Every lock of the set (cuda and cuda-devel): the directory holds their union, so
    # both rows' builds see the same wheels (the same cache key) whichever is built first.
    locks = [lock]
    for path in sorted(lock_dir(context).glob("*.txt")) if context is not None else []:
        if path.stem.startswith(wheel_set(row)) and path.stem != lock.row_key:
            other = read_lock(path)
            if other is not None:
                locks.append(other)
    entries = {e.line(): e for lk in locks for e in lk.entries}
    lock = Lock(lock.row_key, lock.inputs_digest, tuple(entries.values()))
    wanted = {e.filename for e in lock.entries}
    for stale in dest.glob("*.whl"):
        if stale.name not in wanted:
            stale.unlink()  # an older pin: the build copies every *.whl of the directory
    stamp = dest / f".envkit-lock-{_stamp(lock)}"
    if stamp.exists() and all((dest / name).is_file() for name in wanted):
        return sorted(dest.glob("*.whl"))
    for sibling in house.iterdir() if house.is_dir() else []:
        if not sibling.is_dir() or sibling == dest:
            continue
        for name in wanted:
            if (sibling / name).is_file() and not (dest / name).exists():
                # another filesystem: pip downloads it instead
                with contextlib.suppress(OSError):
                    os.link(sibling / name, dest / name)
    if on_line:
        missing = sum(1 for name in wanted if not (dest / name).exists())
        on_line(f"{row.key}: {len(wanted)} locked wheels, {missing} to download")
    # One pip download per lock: each lock is one consistent resolution, but two locks
    # of a set resolved on different days may pin one package at two versions.
    for each in locks:
        _download_lock(row, each, dest)
    for old in dest.glob(".envkit-lock-*"):
        old.unlink()
    stamp.write_text(lock.row_key + "\n", encoding="utf-8")
    return sorted(dest.glob("*.whl"))


def _download_lock(row: ImageRow, lock: Lock, dest: Path) -> None:
    """`pip download --require-hashes` of exactly the wheels of `lock` into `dest`."""
    if all((dest / e.filename).is_file() for e in lock.entries):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as req:
        req.write("\n".join(e.line() for e in lock.entries) + "\n")
    try:
        cmd = [
            *isolated_pip(row.python),
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--index-url",
            row.wheel_index,
            "--dest",
            str(dest),
            *target_flags(row.python),
            "--requirement",
            req.name,
        ]
        result = run_process(cmd, timeout_s=DOWNLOAD_TIMEOUT_S)
    finally:
        Path(req.name).unlink(missing_ok=True)
    if not result.ok:
        why = "timed out" if result.timed_out else result.tail(3)
        raise WheelhouseError(f"downloading the wheels of {lock.row_key} into {dest} failed: {why}")
