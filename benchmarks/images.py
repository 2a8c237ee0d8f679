"""Image size against its payload, and rebuild time after a code-only change.

For every CPU row of the matrix (and every other row already built here):

- size: the image's size against its payload (base image + the venv's installed
  size, `du` inside the image): target <= 1.10x, i.e. the OS packages, user and
  entrypoint layers add at most 10 %;
- budget: the size against the row's `size_budget_mb` in the matrix;
- rebuild: side by side, in one run, the time of a rebuild with no change and
  of a rebuild after a code-only change (a comment appended to envkit's
  code in a private copy of the build context): target <= 30 s.

usage: python benchmarks/images.py [--out results/bench-images.json] [--no-rebuild]
Builds the CPU images first when they are missing (layer cache reused).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from envkit.images.build import find_builder, plan_build, run_build, snapshot_context, source_root
from envkit.images.checks import engine_kind, run_in_image
from envkit.images.wheelhouse import ensure_wheelhouse
from envkit.matrix import ImageRow, load_matrix

SIZE_TARGET = 1.10
REBUILD_TARGET_S = 30.0
MB = 2**20


def image_size(client: Any, tag: str) -> int:
    return int(client.images.get(tag).attrs["Size"])


def venv_bytes(client: Any, tag: str) -> int:
    run = run_in_image(client, tag, ["du", "-sb", "/opt/venv"], shm_size="1g")
    return int(run.stdout.split()[0])


def measure_size(client: Any, row: ImageRow) -> dict[str, Any]:
    size = image_size(client, row.tag)
    base = image_size(client, row.base_image)
    venv = venv_bytes(client, row.tag)
    ratio = size / (base + venv)
    return {
        "image": row.key,
        "tag": row.tag,
        "size_mb": round(size / MB, 1),
        "base_mb": round(base / MB, 1),
        "venv_mb": round(venv / MB, 1),
        "size_over_payload": round(ratio, 3),
        "size_target": SIZE_TARGET,
        "size_ok": ratio <= SIZE_TARGET,
        "size_budget_mb": row.size_budget_mb,
        "budget_ok": size / MB <= row.size_budget_mb,
    }


def timed_build(row: ImageRow, context: Path, tag: str, builder: Any, log: Path) -> dict[str, Any]:
    plan = plan_build(row, context=context, tag=tag, wheelhouse=context / "wheelhouse")
    started = time.perf_counter()
    result = run_build(plan, builder, log)
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "steps": result.steps,
        "cached_steps": result.cached_steps,
    }


def measure_rebuild(client: Any, row: ImageRow, builder: Any, wheelhouse: Path, work: Path) -> dict[str, Any]:
    """No-change rebuild and code-only-change rebuild of a private context copy, side by side."""
    context = snapshot_context(work / f"context-{row.key}", wheelhouse)
    tag = f"envkit-images-bench/rebuild:{row.key}"
    try:
        # The first build of a fresh context copy pays the context transfer (wheels
        # included); the second changes nothing; the third follows a code-only change.
        fresh = timed_build(row, context, tag, builder, work / f"{row.key}-fresh.log")
        warm = timed_build(row, context, tag, builder, work / f"{row.key}-warm.log")
        with (context / "envkit" / "__init__.py").open("a", encoding="utf-8") as fh:
            fh.write(f"# benchmark code-only change {uuid.uuid4().hex}\n")
        before = client.images.get(tag).attrs["RootFS"]["Layers"]
        code = timed_build(row, context, tag, builder, work / f"{row.key}-code.log")
        after = client.images.get(tag).attrs["RootFS"]["Layers"]
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag)
    changed = sum(1 for a, b in zip(before, after, strict=False) if a != b) + abs(len(after) - len(before))
    return {
        "image": row.key,
        "fresh_context_build_s": fresh["seconds"],
        "no_change_rebuild_s": warm["seconds"],
        "code_change_steps_cached": f"{code['cached_steps']}/{code['steps']}",
        "code_change_rebuild_s": code["seconds"],
        "code_change_layers_changed": changed,
        "layers": len(after),
        "rebuild_target_s": REBUILD_TARGET_S,
        "rebuild_ok": code["seconds"] <= REBUILD_TARGET_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench-images.json"))
    parser.add_argument("--no-rebuild", action="store_true", help="Measure sizes only.")
    args = parser.parse_args()

    client = docker.from_env(timeout=600)
    builder = find_builder(engine_kind(client))
    matrix = load_matrix()
    root = source_root()
    wheelhouse = root / "wheelhouse"
    cpu_rows = [r for r in matrix.images if r.variant == "cpu"]
    ensure_wheelhouse(cpu_rows, root / "pyproject.toml", wheelhouse)

    rows = []
    for row in matrix.images:
        try:
            client.images.get(row.tag)
        except docker.errors.ImageNotFound:
            if row not in cpu_rows:
                continue  # a CUDA row not built on this machine
            plan = plan_build(row, wheelhouse=wheelhouse)
            run_build(plan, builder, root / "build" / "images" / f"{row.key}-runtime.log")
        rows.append(row)

    sizes = [measure_size(client, row) for row in rows]
    rebuilds = []
    if not args.no_rebuild:
        with tempfile.TemporaryDirectory(prefix="envkit-bench-images-") as tmp:
            rebuilds = [measure_rebuild(client, row, builder, wheelhouse, Path(tmp)) for row in cpu_rows]

    report = {
        "benchmark": "images",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.node(), "cpus": os.cpu_count(), "builder": builder.kind},
        "sizes": sizes,
        "rebuilds": rebuilds,
        "all_ok": all(s["size_ok"] and s["budget_ok"] for s in sizes)
        and all(r["rebuild_ok"] for r in rebuilds),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp_out.replace(args.out)
    for s in sizes:
        print(
            f"{s['image']:>16}: {s['size_mb']:7.0f} MB = {s['size_over_payload']:.3f}x payload "
            f"(base {s['base_mb']:.0f} + venv {s['venv_mb']:.0f}); budget {s['size_budget_mb']} MB"
        )
    for r in rebuilds:
        print(
            f"{r['image']:>16}: rebuild {r['no_change_rebuild_s']:.1f} s unchanged, "
            f"{r['code_change_rebuild_s']:.1f} s after a code-only change "
            f"({r['code_change_layers_changed']}/{r['layers']} layers changed)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
