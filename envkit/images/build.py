"""Build the matrix's images: a plan from a matrix row, then a BuildKit build.

Why a `docker build` subprocess and not docker-py's `images.build`: docker-py
speaks the engine's legacy build API, which has no BuildKit session, so no
`--secret` (the certificate must never land in a layer), no `RUN --mount`
cache or bind mounts, and no named build contexts. BuildKit lives in the
client (`docker buildx`, or the built-in BuildKit of a docker CLI before 23.0
such as Debian's docker.io 20.10), so the build drives that client and streams
its plain progress; docker-py does everything else (engine detection, base
image lookup, inspect, run, test). Against Podman's Docker-compatible socket
the docker CLI cannot open a BuildKit session, so the build runs `podman
build` (buildah understands the same RUN --mount and --secret) on the same
service, with `--format docker` so HEALTHCHECK survives.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from envkit import __version__
from envkit.images.wheelhouse import base_lock_name, uses_lock, wheel_set_dir
from envkit.matrix import ImageRow
from envkit.process import run_process

DEFAULT_UID = 1000
BUILDKIT_CLI_MAX_MAJOR = 22  # docker CLI 23.0 moved BuildKit into the buildx plugin


class ImageBuildError(RuntimeError):
    """A build could not start or failed; the message names the fix."""


def source_root() -> Path:
    """The checkout envkit runs from (the build context holds Dockerfiles/ and the code)."""
    return Path(__file__).resolve().parents[2]


CONTEXT_PATHS = ("pyproject.toml", "README.md", ".dockerignore", "Dockerfiles", "envkit", "training")
BUILD_TIMEOUT_S = 3 * 3600.0


def snapshot_context(dest: Path, wheelhouse: Path | None = None, source: Path | None = None) -> Path:
    """Copy the build context to `dest` (wheels hard-linked): edit it without touching the checkout."""
    source = source or source_root()
    dest.mkdir(parents=True, exist_ok=True)
    for name in CONTEXT_PATHS:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    if wheelhouse is not None:
        # wheels hard-linked, the top level and each locked row's directory
        for wheel in [*wheelhouse.glob("*.whl"), *wheelhouse.glob("*/*.whl")]:
            target = dest / "wheelhouse" / wheel.relative_to(wheelhouse)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(wheel, target)
            except OSError:  # another filesystem
                shutil.copy2(wheel, target)
    return dest


def dockerfile_for(row: ImageRow, context: Path) -> Path:
    """The one Dockerfile of every row: the rows differ only in build arguments."""
    return context / "Dockerfiles" / "Dockerfile"


DESCRIPTIONS = {
    "pytorch": "PyTorch with envkit (doctor, bench) and its training package",
    "tensorflow": "TensorFlow/Keras with envkit (doctor, bench) and its training package",
}
BENCH_BACKENDS = {"pytorch": "torch", "tensorflow": "tensorflow"}
SOURCE_LABEL = "org.opencontainers.image.source"


def git_revision(context: Path) -> str:
    """HEAD's commit, with '-dirty' when the tree has local changes; 'unknown' without git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(context), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(context), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


_SCP_REMOTE = re.compile(r"^(?:[^@/]+@)?([^:/]+):(?!//)(.+)$")


def https_remote(url: str) -> str | None:
    """A git remote as a public https URL without credentials; None when it is not a remote.

    git@host:org/repo.git, ssh://git@host/org/repo, https://user:token@host/org/repo
    all become https://host/org/repo; a local path or file:// URL gives None (a
    label must not leak the build machine's paths).
    """
    url = url.strip()
    if not url or url.startswith(("/", ".", "file:")):
        return None
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme not in ("https", "http", "ssh", "git", "git+ssh", "ssh+git"):
            return None
        hostpart, _, path = rest.partition("/")
        host = hostpart.rsplit("@", 1)[-1]  # drop user[:token]@
        if scheme != "https" and scheme != "http":
            host = host.split(":", 1)[0]  # an ssh port is not the web server's
    else:
        match = _SCP_REMOTE.match(url)
        if not match:
            return None
        host, path = match.groups()
    path = path.strip("/").removesuffix(".git")
    if not host or not path:
        return None
    return f"https://{host}/{path}"


def git_source(context: Path) -> str | None:
    """The origin remote in https form (the OCI `source` label), or None without one."""
    try:
        url = subprocess.run(
            ["git", "-C", str(context), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return https_remote(url)


@dataclass(frozen=True)
class BuildPlan:
    """Everything one build needs, derived from a matrix row; no engine touched yet."""

    row: ImageRow
    context: Path
    dockerfile: Path
    tag: str
    target: str
    base_image: str
    build_args: dict[str, str]
    secrets: dict[str, Path] = field(default_factory=dict)
    wheelhouse: Path | None = None
    # set at build time with --label (no layer depends on them); absent keys stay absent
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.wheelhouse is not None


def plan_build(
    row: ImageRow,
    *,
    context: Path | None = None,
    base_image: str | None = None,
    tag: str | None = None,
    target: str = "runtime",
    wheelhouse: Path | None = None,
    pip_cert: Path | None = None,
    pip_conf: Path | None = None,
    uid: int = DEFAULT_UID,
    gid: int | None = None,
) -> BuildPlan:
    """Turn a matrix row into build arguments: the Dockerfiles hold no version literal."""
    context = (context or source_root()).resolve()
    dockerfile = dockerfile_for(row, context)
    if not dockerfile.is_file():
        raise ImageBuildError(
            f"{dockerfile} not found: `envkit images build` needs an envkit source checkout "
            "(pass --context DIR)"
        )
    base = base_image or row.base_image
    if row.cuda is None:
        compat = "none"
    elif base.startswith("nvidia/cuda:"):
        compat = "from-base"  # NVIDIA's images carry cuda-compat under /usr/local/cuda/compat
    else:
        compat = "absent"  # PyPI has no cuda-compat: build with --base nvidia/cuda:* for it
    args = {
        "BASE_IMAGE": base,
        "VARIANT": row.variant,
        "PYTHON_VERSION": row.python,
        "FRAMEWORK": row.framework,
        "FRAMEWORK_PACKAGE": row.package,
        "FRAMEWORK_VERSION": row.version,
        "WHEEL_INDEX": row.wheel_index,
        "CUDA_VERSION": row.cuda or "none",
        "ENVKIT_UID": str(uid),
        "ENVKIT_GID": str(uid if gid is None else gid),
        "CUDA_COMPAT": compat,
        "DESCRIPTION": DESCRIPTIONS.get(row.framework, f"{row.framework} with envkit"),
        "BENCH_BACKEND": BENCH_BACKENDS.get(row.framework, row.framework),
        # the dependency layer installs BASE_LOCK (shared by cuda and cuda-devel),
        # venv-cuda-devel adds LOCK's extra wheels (nvcc, headers) on top
        "BASE_LOCK": base_lock_name(row) if uses_lock(row) else "none",
        "LOCK": f"{row.key}.txt" if uses_lock(row) else "none",
        "ENVKIT_VERSION": __version__,
        "REVISION": git_revision(context),
        "CREATED": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "WHEELHOUSE": "none",
        "WHEELS": "wheelhouse",
    }
    source = git_source(context)
    labels = {SOURCE_LABEL: source} if source else {}
    secrets = {}
    for name, path in (("pip_cert", pip_cert), ("pip_conf", pip_conf)):
        if path is not None:
            if not path.is_file():
                raise ImageBuildError(f"{name} file {path} does not exist; pass an existing file")
            secrets[name] = path.resolve()
    if wheelhouse is not None:
        # A locked row reads its own directory (wheelhouse/<row>/), a CPU row the top level.
        wheelhouse = wheel_set_dir(row, wheelhouse.resolve())
        args["WHEELHOUSE"] = "context"
        with contextlib.suppress(ValueError):
            args["WHEELS"] = wheelhouse.relative_to(context).as_posix()
    return BuildPlan(
        row=row,
        context=context,
        dockerfile=dockerfile,
        tag=tag or (row.tag if target == "runtime" else f"{row.tag}-{target}"),
        target=target,
        base_image=base,
        build_args=args,
        secrets=secrets,
        wheelhouse=wheelhouse,
        labels=labels,
    )


def default_pip_cert() -> Path | None:
    """The CA bundle the host's pip trusts ($PIP_CERT), passed on as the pip_cert secret."""
    cert = os.environ.get("PIP_CERT")
    return Path(cert) if cert and Path(cert).is_file() else None


# -- the BuildKit client -------------------------------------------------------


@dataclass(frozen=True)
class Builder:
    """A BuildKit-capable client: argv prefix, extra environment and a name for people."""

    kind: str  # "buildx" | "docker-buildkit" | "podman"
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def named_contexts(self) -> bool:
        return self.kind == "buildx"


def _cli_major(docker: str) -> int | None:
    try:
        out = subprocess.run(
            [docker, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
        return int(out.split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _docker_clis() -> list[str]:
    """Every docker executable on PATH (and Debian's), first match first."""
    seen: list[str] = []
    for d in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        p = Path(d) / "docker"
        if (
            p.is_file()
            and os.access(p, os.X_OK)
            and str(p.resolve()) not in {str(Path(s).resolve()) for s in seen}
        ):
            seen.append(str(p))
    return seen


def find_builder(engine: str = "docker") -> Builder:
    """The BuildKit client for `engine` ('docker' or 'podman'), or an error naming the fix.

    ENVKIT_DOCKER_CLI overrides the docker executable.
    """
    if engine == "podman":
        podman = shutil.which("podman")
        if not podman:
            raise ImageBuildError(
                "the engine is Podman but no `podman` CLI is installed; install it (apt-get install podman)"
            )
        url = os.environ.get("DOCKER_HOST", "")
        # A local socket: build with the local podman, which shares the service's
        # storage (podman 4.3's remote build drops --secret files). Remote: --url.
        remote = url.startswith(("tcp://", "ssh://"))
        argv = [podman, *(["--url", url] if remote else []), "build"]
        env = {"BUILDAH_ISOLATION": os.environ.get("BUILDAH_ISOLATION", "chroot")}
        return Builder("podman", (*argv, "--format", "docker"), env)
    override = os.environ.get("ENVKIT_DOCKER_CLI")
    clis = [override] if override else _docker_clis()
    for docker in clis:
        probe = subprocess.run([docker, "buildx", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return Builder("buildx", (docker, "buildx", "build", "--load"))
    for docker in clis:
        major = _cli_major(docker)
        if major is not None and major <= BUILDKIT_CLI_MAX_MAJOR:
            return Builder("docker-buildkit", (docker, "build"), {"DOCKER_BUILDKIT": "1"})
    raise ImageBuildError(
        "no BuildKit client found: install the buildx plugin (apt-get install docker-buildx) "
        "or Debian's docker.io, or set ENVKIT_DOCKER_CLI"
    )


def build_command(plan: BuildPlan, builder: Builder, *, no_cache: bool = False) -> list[str]:
    """The full build command line (secrets as file paths, never their contents)."""
    cmd = [*builder.argv, "--progress=plain"] if builder.kind != "podman" else [*builder.argv]
    if no_cache:
        cmd.append("--no-cache")  # a cold build (benchmarks); cache mounts stay, the wheelhouse is offline
    cmd += ["--file", str(plan.dockerfile), "--target", plan.target, "--tag", plan.tag]
    args = dict(plan.build_args)
    if plan.wheelhouse is not None:
        inside = plan.wheelhouse.is_relative_to(plan.context / "wheelhouse")
        if builder.named_contexts:
            # buildx replaces the `wheelhouse` stage by the directory: no copy, any path.
            args["WHEELHOUSE"] = "none"
            cmd += ["--build-context", f"wheelhouse={plan.wheelhouse}"]
        elif not inside:
            raise ImageBuildError(
                f"wheelhouse {plan.wheelhouse} must be {plan.context / 'wheelhouse'} with this "
                "BuildKit client (no named build contexts); move it there or install buildx"
            )
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    for key, value in plan.labels.items():
        cmd += ["--label", f"{key}={value}"]
    for name, path in plan.secrets.items():
        cmd += ["--secret", f"id={name},src={path}"]
    return [*cmd, str(plan.context)]


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    seconds: float
    steps: int
    cached_steps: int
    log: Path


def run_build(
    plan: BuildPlan,
    builder: Builder,
    log_path: Path,
    on_step: Callable[[str], None] | None = None,
    timeout_s: float = BUILD_TIMEOUT_S,
    no_cache: bool = False,
) -> BuildResult:
    """Run the build, streaming each step's title to `on_step` and every line to `log_path`.

    The image the tag named before is removed when the build left it dangling
    (untagged, unused): repeated builds must not fill the disk with our old images.
    """
    cmd = build_command(plan, builder, no_cache=no_cache)
    env = {**os.environ, **builder.env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    previous = _image_id(plan.tag)
    started = time.monotonic()
    steps: dict[str, str] = {}
    cached: set[str] = set()
    last = [""]
    with log_path.open("w", encoding="utf-8", buffering=1) as log:
        log.write("$ " + " ".join(cmd) + "\n")

        def on_line(line: str) -> None:
            log.write(line + "\n")
            step = _step_title(line, builder.kind)
            if step is None:
                return
            ident, title = step
            if title == "CACHED":
                cached.add(ident or last[0])  # podman's cache line names no step
                return
            last[0] = ident
            if ident not in steps:
                steps[ident] = title
                if on_step:
                    on_step(title)

        try:
            result = run_process(cmd, timeout_s=timeout_s, env=env, on_line=on_line, merge_stderr=True)
        except OSError as exc:
            raise ImageBuildError(f"cannot run {cmd[0]}: {exc}") from None
    if not result.ok:
        why = f"timed out after {timeout_s:.0f} s" if result.timed_out else f"exit {result.returncode}"
        tail = [ln.rstrip() for ln in log_path.read_text(encoding="utf-8").splitlines()[-6:]]
        raise ImageBuildError(f"build of {plan.tag} failed ({why}); log {log_path}: " + " | ".join(tail))
    image_id = _image_id(plan.tag)
    if previous and previous != image_id:
        remove_if_dangling(previous)
    return BuildResult(
        plan.tag, image_id, time.monotonic() - started, len(steps), len(cached & set(steps)), log_path
    )


def remove_if_dangling(image_id: str) -> bool:
    """Remove `image_id` if it has no tag and no container uses it (the old build of our tag)."""
    try:
        import docker as docker_py

        client = docker_py.from_env()
        image = client.images.get(image_id)
        if image.tags:
            return False
        if client.containers.list(all=True, filters={"ancestor": image_id}):
            return False
        client.images.remove(image_id, noprune=False)
        return True
    except Exception:  # a conflict (child images) or a gone image: leave it to the engine
        return False


_PODMAN_STEP = re.compile(r"^((?:\[\d+/\d+\] )?STEP \d+/\d+):")


def _step_title(line: str, kind: str) -> tuple[str, str] | None:
    """('#7', '[builder 3/5] RUN ...') from BuildKit's plain progress; ('#7', 'CACHED')."""
    line = line.rstrip()
    if kind == "podman":
        # "[2/11] STEP 3/8: RUN ..." then, on a cache hit, "--> Using cache <id>"
        match = _PODMAN_STEP.match(line)
        if match:
            return match.group(1), line
        if line.startswith("--> Using cache"):
            return "", "CACHED"
        return None
    if not line.startswith("#"):
        return None
    ident, _, rest = line.partition(" ")
    if rest == "CACHED":
        return ident, "CACHED"
    if rest.startswith("[") and "]" in rest and not rest.startswith("[internal]"):
        return ident, rest
    return None


def _image_id(tag: str) -> str:
    try:
        import docker as docker_py

        return str(docker_py.from_env().images.get(tag).id)
    except Exception:  # the tag was built; an unreadable id must not fail the build
        return ""


# -- build cache: our superseded layers ------------------------------------------

# Step commands of Dockerfiles/Dockerfile: a build cache record whose description holds
# one of them was made by an envkit image build (BuildKit records name no Dockerfile).
OWN_STEPS = (
    "/ctx/pip.sh",
    "/ctx/requirements.py",
    "/ctx/cudalibs.py",
    "/dist/envkit-",
    "ibverbs-providers",
    "useradd --uid",
    "python${PYTHON_VERSION}",
)


@dataclass(frozen=True)
class CachePrune:
    removed: int
    reclaimed_bytes: int
    kept: int


def stale_cache_records(records: list[dict], unused_for_s: float, now: datetime | None = None) -> list[dict]:
    """Records of envkit builds, not in use, not shared with an image, unused for `unused_for_s`.

    A lock or pyproject change leaves the old multi-GB dependency layer behind; a
    rebuild never uses it again. Records shared with an image stay (the image holds
    them anyway), and so do other projects' records: only envkit's steps match.
    """
    now = now or datetime.now(UTC)
    stale = []
    for rec in records:
        text = rec.get("Description") or ""
        if rec.get("InUse") or rec.get("Shared") or not any(step in text for step in OWN_STEPS):
            continue
        when = _engine_time(rec.get("LastUsedAt") or rec.get("CreatedAt") or "")
        if when is not None and (now - when).total_seconds() >= unused_for_s:
            stale.append(rec)
    return stale


def _engine_time(text: str) -> datetime | None:
    """The engine's RFC 3339 time (nanoseconds, Z) as an aware datetime; None if unreadable."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def prune_build_cache(client: object, unused_for_s: float = 24 * 3600.0) -> CachePrune:
    """Remove envkit's stale build cache records (see stale_cache_records) from the engine."""
    records = list(client.df().get("BuildCache") or [])  # type: ignore[attr-defined]
    stale = stale_cache_records(records, unused_for_s)
    reclaimed = 0
    for rec in stale:
        result = client.api.prune_builds(filters={"id": rec["ID"]})  # type: ignore[attr-defined]
        reclaimed += int(result.get("SpaceReclaimed") or 0)
    return CachePrune(len(stale), reclaimed, len(records) - len(stale))
