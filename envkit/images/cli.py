"""`envkit images`: list, build and test the version matrix's container images.

Thin commands: each parses its options, calls envkit.images.{build,checks,
wheelhouse} and renders the result as a Rich table or as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from envkit.images.build import (
    BuildResult,
    ImageBuildError,
    find_builder,
    plan_build,
    run_build,
    source_root,
)
from envkit.images.checks import check_image, engine_kind
from envkit.images.wheelhouse import WheelhouseError, ensure_wheelhouse
from envkit.matrix import ImageRow, MatrixError, load_matrix

app = typer.Typer(help="List, build and test the matrix's container images.", no_args_is_help=True)
console = Console(stderr=True)
VARIANTS = "cpu | cuda | cuda-devel"


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _rows(name: str | None, variant: str, every: bool) -> list[ImageRow]:
    try:
        matrix = load_matrix()
        if every:
            return [r for r in matrix.images if name is None or r.name == name]
        if name is None:
            raise _fail("name an image (e.g. `pytorch`) or pass --all", 2)
        return [matrix.image(name, variant)]
    except MatrixError as exc:
        raise _fail(f"{exc} (see `envkit images list`)", 2) from None


def _client() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as exc:  # DockerException, connection refused, permission denied
        raise _fail(
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
                "size_budget_mb": row.size_budget_mb,
                "built": None if client is None else image is not None,
                "size_mb": round(image.attrs["Size"] / 2**20) if image else None,
            }
        )
    if as_json:
        typer.echo(json.dumps({"images": data}, indent=2))
        return
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
    Console().print(table)


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
) -> tuple[list[BuildResult], list[tuple[str, str]]]:
    """Build every row's targets with a progress line; return results and skipped rows."""
    from envkit.images.build import default_pip_cert

    for flag, path in (("--pip-cert", pip_cert), ("--pip-conf", pip_conf), ("--wheelhouse", wheelhouse)):
        if path is not None and not path.exists():
            raise _fail(f"{flag} {path} does not exist; pass an existing path", 2)
    client = _client()
    try:
        builder = find_builder(engine_kind(client))
    except ImageBuildError as exc:
        raise _fail(str(exc)) from None
    ctx = (context or source_root()).resolve()
    house = None if online else (wheelhouse or ctx / "wheelhouse").resolve()
    cert = pip_cert or default_pip_cert()
    results: list[BuildResult] = []
    skipped: list[tuple[str, str]] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
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
                raise _fail(f"{reason}; pass --base IMAGE or load it with `docker load`")
        if house is not None and buildable:
            task = progress.add_task(f"wheelhouse {house}", total=None)
            try:
                ensure_wheelhouse(
                    buildable,
                    ctx / "pyproject.toml",
                    house,
                    on_line=lambda s: progress.update(task, description=f"wheelhouse: {s}"),
                )
            except WheelhouseError as exc:
                raise _fail(f"{exc}; retry, or build with --online") from None
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
                    raise _fail(str(exc), 2) from None
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
                    raise _fail(str(exc)) from None
                progress.update(
                    task,
                    description=f"[green]{plan.tag}[/green]: built, "
                    f"{result.cached_steps}/{result.steps} steps cached",
                )
                results.append(result)
    return results, skipped


@app.command("build")
def build(
    name: str | None = typer.Argument(None, help="Image name from the matrix: pytorch or tensorflow."),
    variant: str = typer.Option("cpu", "--variant", help=f"Matrix variant: {VARIANTS}."),
    every: bool = typer.Option(
        False, "--all", help="Every row (of NAME, if given) whose base image is available."
    ),
    base: str | None = typer.Option(None, "--base", help="Override the row's base image."),
    wheelhouse: Path | None = typer.Option(
        None,
        "--wheelhouse",
        help="Offline wheel directory (default: ./wheelhouse, filled by pip here).",
    ),
    online: bool = typer.Option(
        False, "--online", help="No wheelhouse: pip in the build reaches the index (pip_cert secret)."
    ),
    target: str = typer.Option("runtime", "--target", help="Dockerfile stage: runtime or test."),
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
    if variant not in ("cpu", "cuda", "cuda-devel"):
        raise _fail(f"--variant {variant!r} is not one of {VARIANTS}", 2)
    if target not in ("runtime", "test"):
        raise _fail(f"--target {target!r} is not one of runtime, test", 2)
    if online and wheelhouse is not None:
        raise _fail("--online and --wheelhouse exclude each other; pass one", 2)
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
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
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
                },
                indent=2,
            )
        )
        return
    table = Table(title="built")
    for col in ("tag", "id", "seconds", "cached steps"):
        table.add_column(col)
    for r in results:
        table.add_row(r.tag, r.image_id[7:19], f"{r.seconds:.1f}", f"{r.cached_steps}/{r.steps}")
    Console().print(table)
    for key, why in skipped:
        console.print(f"[yellow]skipped {key}:[/yellow] {why}", highlight=False, soft_wrap=True)


@app.command("test")
def test(
    name: str = typer.Argument(..., help="Image name from the matrix: pytorch or tensorflow."),
    variant: str = typer.Option("cpu", "--variant", help=f"Matrix variant: {VARIANTS}."),
    no_build: bool = typer.Option(
        False, "--no-build", help="Test the existing image only; skip the `test` build target."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Build the image's `test` target (doctor + tiny bench inside), then check it from outside."""
    row = _rows(name, variant, every=False)[0]
    client = _client()
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
    elif _local_image(client, row.tag) is None:
        raise _fail(
            f"{row.tag} is not built here; run `envkit images build {row.name} --variant {row.variant}`"
        )
    checks = check_image(client, row, row.tag)
    failed = [c for c in checks if not c.ok]
    if as_json:
        typer.echo(json.dumps({"image": row.tag, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        table = Table(title=f"{row.tag}")
        for col in ("check", "result", "evidence"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]ok[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
        Console().print(table)
    if failed:
        raise typer.Exit(1)


@app.command("wheelhouse")
def wheelhouse_command(
    name: str | None = typer.Argument(None, help="Image name; all rows when omitted."),
    variant: str = typer.Option("cpu", "--variant", help=f"Matrix variant: {VARIANTS}."),
    directory: Path | None = typer.Option(None, "--dir", help="Destination (default ./wheelhouse)."),
) -> None:
    """Download (once) every wheel the images need, for offline and air-gapped builds."""
    rows = _rows(name, variant, every=name is None)
    ctx = source_root()
    dest = (directory or ctx / "wheelhouse").resolve()
    try:
        with console.status("pip download ...") as status:
            wheels = ensure_wheelhouse(rows, ctx / "pyproject.toml", dest, on_line=status.update)
    except WheelhouseError as exc:
        raise _fail(str(exc)) from None
    size = sum(w.stat().st_size for w in wheels) / 2**20
    typer.echo(f"{dest}: {len(wheels)} wheels, {size:.0f} MiB")
