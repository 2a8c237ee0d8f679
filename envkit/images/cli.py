"""`envkit images`: list, build and test the version matrix's container images.

Thin commands: each parses its options, calls envkit.images.{build,checks,
wheelhouse} and renders the result as a Rich table or as JSON. Errors follow
envkit/cli_support.py: a wrong input is one `error:` line and exit 2, a
machine or check failure exit 1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from envkit.cli_support import CheckFailed, UsageError, console, emit, exit_with, make_app
from envkit.images.build import (
    BuildResult,
    ImageBuildError,
    default_pip_cert,
    find_builder,
    plan_build,
    prune_build_cache,
    run_build,
    source_root,
)
from envkit.images.checks import check_image, engine_kind, row_for_image
from envkit.images.wheelhouse import WheelhouseError, check_lock, ensure_wheelhouse, uses_lock
from envkit.matrix import ImageRow, MatrixError, load_matrix

app = make_app(help="List, build and test the matrix's container images.")
VARIANTS = ("cpu", "cuda", "cuda-devel")
TARGETS = ("runtime", "test")
_STAGE = re.compile(r"^FROM\s+\S+\s+AS\s+([A-Za-z0-9_.\-]+)\s*$", re.IGNORECASE | re.MULTILINE)


def dockerfile_stages(dockerfile: Path) -> list[str]:
    """The named stages of a Dockerfile (`FROM ... AS name`), in order."""
    return _STAGE.findall(dockerfile.read_text(encoding="utf-8"))


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UsageError(f"--variant {variant!r} is not one of {', '.join(VARIANTS)}; pick one of them")


def _rows(name: str | None, variant: str, every: bool) -> list[ImageRow]:
    _check_variant(variant)
    try:
        matrix = load_matrix()
        if every:
            rows = [r for r in matrix.images if name is None or r.name == name]
            if not rows:
                raise MatrixError(f"no image named {name!r}")
            return rows
        if name is None:
            raise UsageError("name an image (e.g. `pytorch`) or pass --all")
        return [matrix.image(name, variant)]
    except MatrixError as exc:
        raise UsageError(f"{exc} (see `envkit images list`)") from None


def _client() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # DockerException, connection refused, permission denied
        raise CheckFailed(
            f"no container engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} "
            f"({type(exc).__name__}); start one with `bash scripts/docker-engine.sh` or set DOCKER_HOST"
        ) from None


def _local_image(client: Any, tag: str) -> Any | None:
    import docker

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def base_available(client: Any, base: str) -> str | None:
    """None when `base` is local or could be pulled; else the reason it is not."""
    import docker

    if _local_image(client, base) is not None:
        return None
    try:
        client.images.pull(base)
        return None
    except docker.errors.APIError as exc:
        return f"base image {base} is not present and cannot be pulled ({exc.explanation or exc})"


@app.command("list")
def list_images(as_json: bool = typer.Option(False, "--json", help="Print JSON for machines.")) -> None:
    """The image rows of the matrix, their tags, and whether each is built here."""
    rows = _rows(None, "cpu", every=True)
    client = None
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # listing works without an engine; only `built` is unknown
        client = None
    data = []
    for row in rows:
        image = _local_image(client, row.tag) if client else None
        data.append(
            {
                "name": row.name,
                "variant": row.variant,
                "tag": row.tag,
                "framework": f"{row.package}=={row.version}",
                "cuda": row.cuda,
                "python": row.python,
                "base_image": row.base_image,
                "locked": uses_lock(row),
                "size_budget_mb": row.size_budget_mb,
                "built": None if client is None else image is not None,
                "size_mb": round(image.attrs["Size"] / 2**20) if image else None,
            }
        )

    def render(out: Any) -> None:
        table = Table(title="envkit images (envkit/data/matrix.yaml)")
        for col in ("image", "tag", "cuda", "python", "base image", "MB / budget"):
            table.add_column(col, overflow="fold")
        for d in data:
            size = "-" if d["size_mb"] is None else str(d["size_mb"])
            table.add_row(
                f"{d['name']}-{d['variant']}",
                d["tag"],
                d["cuda"] or "-",
                d["python"],
                d["base_image"],
                f"{size} / {d['size_budget_mb']}",
            )
        out.print(table)

    emit({"images": data}, as_json=as_json, render=render)


def _build_rows(
    rows: list[ImageRow],
    *,
    targets: tuple[str, ...],
    base: str | None,
    wheelhouse: Path | None,
    online: bool,
    uid: int,
    pip_cert: Path | None,
    pip_conf: Path | None,
    context: Path | None,
    skip_missing_base: bool,
    download: bool = True,
) -> tuple[list[BuildResult], list[tuple[str, str]]]:
    """Build every row's targets with a progress line; return results and skipped rows."""
    for flag, path in (("--pip-cert", pip_cert), ("--pip-conf", pip_conf), ("--wheelhouse", wheelhouse)):
        if path is not None and not path.exists():
            raise UsageError(f"{flag} {path} does not exist; pass an existing path")
    ctx = (context or source_root()).resolve()
    if not (ctx / "Dockerfiles" / "Dockerfile").is_file():
        raise UsageError(f"--context {ctx} has no Dockerfiles/Dockerfile; pass an envkit source checkout")
    house = None if online else (wheelhouse or ctx / "wheelhouse").resolve()
    if online or not download:
        for row in rows:
            if uses_lock(row):
                try:
                    check_lock(row, ctx / "pyproject.toml", ctx)
                except WheelhouseError as exc:
                    raise UsageError(str(exc)) from None
    client = _client()
    try:
        builder = find_builder(engine_kind(client))
    except ImageBuildError as exc:
        raise CheckFailed(str(exc)) from None
    cert = pip_cert or default_pip_cert()
    results: list[BuildResult] = []
    skipped: list[tuple[str, str]] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=False,
    ) as progress:
        buildable = []
        for row in rows:
            reason = base_available(client, base or row.base_image)
            if reason is None:
                buildable.append(row)
            elif skip_missing_base:
                skipped.append((row.key, reason))
            else:
                raise UsageError(f"{reason}; pass --base IMAGE or load it with `docker load`")
        if house is not None and buildable and download:
            task = progress.add_task(f"wheelhouse {house}", total=None)
            try:
                ensure_wheelhouse(
                    buildable,
                    ctx / "pyproject.toml",
                    house,
                    on_line=lambda s: progress.update(task, description=f"wheelhouse: {s}"),
                )
            except WheelhouseError as exc:
                raise CheckFailed(f"{exc}; retry, or build with --online") from None
            progress.update(task, description=f"wheelhouse {house}: ready")
        for row in buildable:
            for target in targets:
                try:
                    plan = plan_build(
                        row,
                        context=ctx,
                        base_image=base,
                        target=target,
                        wheelhouse=house,
                        pip_cert=cert,
                        pip_conf=pip_conf,
                        uid=uid,
                    )
                except ImageBuildError as exc:
                    raise UsageError(str(exc)) from None
                task = progress.add_task(f"{plan.tag}: starting ({builder.kind})", total=None)
                log = ctx / "build" / "images" / f"{row.key}-{target}.log"
                try:
                    result = run_build(
                        plan,
                        builder,
                        log,
                        on_step=lambda s, t=task, tag=plan.tag: progress.update(
                            t, description=f"{tag}: {s[:90]}"
                        ),
                    )
                except ImageBuildError as exc:
                    progress.update(task, description=f"[red]{plan.tag}: failed")
                    raise CheckFailed(str(exc)) from None
                progress.update(
                    task,
                    description=f"[green]{plan.tag}[/green]: built in {result.seconds:.0f} s, "
                    f"{result.cached_steps}/{result.steps} steps cached",
                )
                results.append(result)
    return results, skipped


@app.command("build")
def build(
    name: str | None = typer.Argument(None, help="Image name from the matrix: pytorch or tensorflow."),
    variant: str = typer.Option("cpu", "--variant", help=f"Matrix variant: {' | '.join(VARIANTS)}."),
    every: bool = typer.Option(
        False, "--all", help="Every row (of NAME, if given) whose base image is available."
    ),
    base: str | None = typer.Option(
        None, "--base", help="Override the row's base image (e.g. nvidia/cuda:13.0.0-base-ubuntu24.04)."
    ),
    wheelhouse: Path | None = typer.Option(
        None,
        "--wheelhouse",
        help="Offline wheel directory (default: ./wheelhouse, filled by pip here).",
    ),
    online: bool = typer.Option(
        False, "--online", help="No wheelhouse: pip in the build reaches the index (pip_cert secret)."
    ),
    no_download: bool = typer.Option(
        False,
        "--no-download",
        help="Use the wheelhouse as it is, download nothing (one carried to an air-gapped host).",
    ),
    target: str = typer.Option(
        "runtime",
        "--target",
        help="Dockerfile stage: runtime or test (or a smaller stage, e.g. envkit-wheel, as a smoke build).",
    ),
    uid: int = typer.Option(1000, "--uid", help="uid (and gid) of the image's non-root user `envkit`."),
    pip_cert: Path | None = typer.Option(
        None, "--pip-cert", help="CA bundle for pip, as the pip_cert build secret (default: $PIP_CERT)."
    ),
    pip_conf: Path | None = typer.Option(
        None, "--pip-conf", help="pip.conf with private index settings, as the pip_conf build secret."
    ),
    context: Path | None = typer.Option(None, "--context", help="Build context (an envkit checkout)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Build images from the matrix with BuildKit (progress on stderr, log under build/images/)."""
    _check_variant(variant)
    if online and (wheelhouse is not None or no_download):
        raise UsageError("--online and --wheelhouse/--no-download exclude each other; pass one")
    dockerfile = (context or source_root()).resolve() / "Dockerfiles" / "Dockerfile"
    stages = dockerfile_stages(dockerfile) if dockerfile.is_file() else list(TARGETS)
    if target not in stages:
        raise UsageError(
            f"--target {target!r} is not a stage of {dockerfile}; "
            f"pick runtime, test or one of {', '.join(stages)}"
        )
    rows = _rows(name, variant, every)
    results, skipped = _build_rows(
        rows,
        targets=(target,),
        base=base,
        wheelhouse=wheelhouse,
        online=online,
        uid=uid,
        pip_cert=pip_cert,
        pip_conf=pip_conf,
        context=context,
        skip_missing_base=every,
        download=not no_download,
    )
    doc = {
        "built": [
            {
                "tag": r.tag,
                "id": r.image_id,
                "seconds": round(r.seconds, 1),
                "steps": r.steps,
                "cached_steps": r.cached_steps,
                "log": str(r.log),
            }
            for r in results
        ],
        "skipped": [{"image": k, "reason": why} for k, why in skipped],
    }

    def render(out: Any) -> None:
        table = Table(title="built")
        for col in ("tag", "id", "seconds", "cached steps"):
            table.add_column(col)
        for r in results:
            table.add_row(r.tag, r.image_id[7:19], f"{r.seconds:.1f}", f"{r.cached_steps}/{r.steps}")
        out.print(table)
        for key, why in skipped:
            console(stderr=True).print(f"[yellow]skipped {key}:[/yellow] {why}", soft_wrap=True)

    emit(doc, as_json=as_json, render=render)


@app.command("test")
def test(
    image: str = typer.Argument(
        ...,
        help="An image reference (tag or id, e.g. envkit/pytorch:2.13.0-cuda13.0, built here or pulled), "
        "or a matrix name (pytorch, tensorflow) with --variant: that row is built first.",
    ),
    variant: str = typer.Option("cpu", "--variant", help=f"With a matrix name: {' | '.join(VARIANTS)}."),
    no_build: bool = typer.Option(
        False, "--no-build", help="With a matrix name: test the existing image; build nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Check an image from outside against its matrix row (labels, versions, CUDA, user, secrets)."""
    _check_variant(variant)
    names = {r.name for r in load_matrix().images}
    client = _client()
    if image in names:
        row = _rows(image, variant, every=False)[0]
        tag = row.tag
        if not no_build:
            _build_rows(
                [row],
                targets=("runtime", "test"),
                base=None,
                wheelhouse=None,
                online=False,
                uid=1000,
                pip_cert=None,
                pip_conf=None,
                context=None,
                skip_missing_base=False,
            )
        elif _local_image(client, tag) is None:
            raise UsageError(
                f"{tag} is not built here; run `envkit images build {row.name} --variant {row.variant}`"
            )
    else:
        found = _local_image(client, image)
        if found is None:
            raise UsageError(
                f"image {image!r} is not on this engine; build it, `docker pull` it, "
                f"or name a matrix image ({', '.join(sorted(names))})"
            )
        try:
            row = row_for_image(load_matrix(), found.labels or {})
        except MatrixError as exc:
            raise UsageError(f"{image}: {exc}; test an image built by `envkit images build`") from None
        tag = image
    checks = check_image(client, row, tag)
    failed = [c for c in checks if not c.ok]

    def render(out: Any) -> None:
        table = Table(title=f"{tag} ({row.key})")
        for col in ("check", "result", "evidence"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
        out.print(table)

    emit(
        {"image": tag, "row": row.key, "checks": [c.to_dict() for c in checks]},
        as_json=as_json,
        render=render,
    )
    if failed:
        exit_with(1)


@app.command("wheelhouse")
def wheelhouse_command(
    name: str | None = typer.Argument(None, help="Image name; all rows when omitted."),
    variant: str = typer.Option("cpu", "--variant", help=f"Matrix variant: {' | '.join(VARIANTS)}."),
    every: bool = typer.Option(False, "--all", help="Every variant of NAME (all rows when NAME is omitted)."),
    directory: Path | None = typer.Option(None, "--dir", help="Destination (default ./wheelhouse)."),
    relock: bool = typer.Option(
        False,
        "--relock",
        help="Resolve the CUDA rows' locks again (Dockerfiles/locks/*.txt) even when their inputs are "
        "unchanged: moves the nvidia-*/cuda-* pins to what the index serves now.",
    ),
) -> None:
    """Download (once) every wheel the images need, for offline and air-gapped builds.

    CUDA rows are first resolved into their hashed lock (written when missing or
    stale); the build installs exactly that lock.
    """
    rows = _rows(name, variant, every=every or name is None)
    ctx = source_root()
    dest = (directory or ctx / "wheelhouse").resolve()
    try:
        with console(stderr=True).status("pip download ...") as status:
            wheels = ensure_wheelhouse(
                rows, ctx / "pyproject.toml", dest, on_line=status.update, relock=relock
            )
    except WheelhouseError as exc:
        raise CheckFailed(str(exc)) from None
    size = sum(w.stat().st_size for w in set(wheels)) / 2**20
    typer.echo(f"{dest}: {len(set(wheels))} wheels, {size:.0f} MiB")
    for row in rows:
        if uses_lock(row):
            typer.echo(f"lock {ctx / 'Dockerfiles' / 'locks' / (row.key + '.txt')}")


@app.command("prune-cache")
def prune_cache(
    unused_for_h: float = typer.Option(
        24.0, "--unused-for-h", help="Remove envkit's build cache records unused for this many hours."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Remove envkit's superseded build layers (an old lock's venv, old code) from BuildKit's cache.

    Only records made by envkit's Dockerfile steps, neither in use nor shared with
    an image; other projects' cache and every image stay.
    """
    if unused_for_h < 0:
        raise UsageError(f"--unused-for-h {unused_for_h} is negative; pass 0 or more hours")
    try:
        result = prune_build_cache(_client(), unused_for_h * 3600.0)
    except CheckFailed:
        raise
    except Exception as exc:  # docker.errors.APIError: an engine without BuildKit's cache API
        raise CheckFailed(f"pruning the build cache failed: {exc}") from None
    doc = {
        "removed": result.removed,
        "reclaimed_mb": round(result.reclaimed_bytes / 2**20),
        "kept": result.kept,
    }
    emit(
        doc,
        as_json=as_json,
        render=lambda out: out.print(
            f"removed {doc['removed']} build cache records ({doc['reclaimed_mb']} MiB), kept {doc['kept']}"
        ),
    )
