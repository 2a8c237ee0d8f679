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
from envkit.matrix import ImageRow

DEFAULT_UID = 1000
BUILDKIT_CLI_MAX_MAJOR = 22  # docker CLI 23.0 moved BuildKit into the buildx plugin


class ImageBuildError(RuntimeError):
    """A build could not start or failed; the message names the fix."""


def source_root() -> Path:
    """The checkout envkit runs from (the build context holds Dockerfiles/ and the code)."""
    return Path(__file__).resolve().parents[2]


CONTEXT_PATHS = ("pyproject.toml", "README.md", ".dockerignore", "Dockerfiles", "envkit", "training")


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
        (dest / "wheelhouse").mkdir()
        for wheel in wheelhouse.glob("*.whl"):
            try:
                os.link(wheel, dest / "wheelhouse" / wheel.name)
            except OSError:  # another filesystem
                shutil.copy2(wheel, dest / "wheelhouse" / wheel.name)
    return dest


def dockerfile_for(row: ImageRow, context: Path) -> Path:
    return context / "Dockerfiles" / f"{row.name}.Dockerfile"


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


def git_source(context: Path) -> str:
    """The origin remote's URL (the OCI `source` label), or 'unknown'."""
    try:
        url = subprocess.run(
            ["git", "-C", str(context), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return url or "unknown"


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
        "ENVKIT_VERSION": __version__,
        "SOURCE": git_source(context),
        "REVISION": git_revision(context),
        "CREATED": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "WHEELHOUSE": "none",
    }
    secrets = {}
    for name, path in (("pip_cert", pip_cert), ("pip_conf", pip_conf)):
        if path is not None:
            if not path.is_file():
                raise ImageBuildError(f"{name} file {path} does not exist; pass an existing file")
            secrets[name] = path.resolve()
    if wheelhouse is not None:
        wheelhouse = wheelhouse.resolve()
        args["WHEELHOUSE"] = "context"
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


def build_command(plan: BuildPlan, builder: Builder) -> list[str]:
    """The full build command line (secrets as file paths, never their contents)."""
    cmd = [*builder.argv, "--progress=plain"] if builder.kind != "podman" else [*builder.argv]
    cmd += ["--file", str(plan.dockerfile), "--target", plan.target, "--tag", plan.tag]
    args = dict(plan.build_args)
    if plan.wheelhouse is not None:
        inside = plan.wheelhouse == plan.context / "wheelhouse"
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
) -> BuildResult:
    """Run the build, streaming each step's title to `on_step` and every line to `log_path`."""
    cmd = build_command(plan, builder)
    env = {**os.environ, **builder.env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    steps: dict[str, str] = {}
    cached: set[str] = set()
    last = ""
    with log_path.open("w", encoding="utf-8", buffering=1) as log:
        log.write("$ " + " ".join(cmd) + "\n")
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
            )
        except OSError as exc:
            raise ImageBuildError(f"cannot run {cmd[0]}: {exc}") from None
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            step = _step_title(line, builder.kind)
            if step is not None:
                ident, title = step
                if title == "CACHED":
                    cached.add(ident or last)  # podman's cache line names no step
                    continue
                last = ident
                if ident not in steps:
                    steps[ident] = title
                    if on_step:
                        on_step(title)
        rc = proc.wait()
    if rc != 0:
        tail = [ln.rstrip() for ln in log_path.read_text(encoding="utf-8").splitlines()[-6:]]
        raise ImageBuildError(f"build of {plan.tag} failed (exit {rc}); log {log_path}: " + " | ".join(tail))
    image_id = _image_id(plan.tag)
    return BuildResult(
        plan.tag, image_id, time.monotonic() - started, len(steps), len(cached & set(steps)), log_path
    )


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
