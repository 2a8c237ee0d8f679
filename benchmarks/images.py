"""Image size against its payload, cold build time, and rebuild time after a code-only change.

For every row of the matrix (CPU and CUDA: all build from the local base here):

- size: the image's size against its payload, the flattened filesystem a
  container sees (`du -sbx /` inside): target <= 1.10x, i.e. files overwritten
  or deleted across layers (a chown copy, an apt cache) add at most 10 %;
  the venv's size is reported beside it;
- budget: the size against the row's `size_budget_mb` in the matrix;
- cold build (`--cold`): a build with no layer cache and an empty wheelhouse
  in a private copy of the context (wheel download included), per row;
- rebuild: side by side, in one run, the time of a rebuild with no change and
  of a rebuild after a code-only change (a comment appended to envkit's
  code in a private copy of the build context): target <= 30 s for the CPU
  rows, <= 60 s for the CUDA rows (issue 12), one layer changed.

usage: python benchmarks/images.py [--out results/bench-images.json] [--no-rebuild]
                                   [--cold] [--rows pytorch-cuda,tensorflow-cpu]
Builds missing images first (layer cache and wheelhouse reused). Build one row
at a time: the builds are CPU- and disk-bound.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from envkit.atomic import atomic_write_json
from envkit.images.build import find_builder, plan_build, run_build, snapshot_context, source_root
from envkit.images.checks import engine_kind, run_in_image
from envkit.images.wheelhouse import ensure_wheelhouse
from envkit.matrix import ImageRow, load_matrix

SIZE_TARGET = 1.10
REBUILD_TARGET_S = {"cpu": 30.0, "cuda": 60.0, "cuda-devel": 60.0}
MB = 2**20


def image_size(client: Any, tag: str) -> int:
    return int(client.images.get(tag).attrs["Size"])


def du_bytes(client: Any, tag: str, path: str) -> int:
    run = run_in_image(client, tag, ["du", "-sbx", path], shm_size="1g", timeout=900)
    return int(run.stdout.split()[0])


def measure_size(client: Any, row: ImageRow) -> dict[str, Any]:
    size = image_size(client, row.tag)
    rootfs = du_bytes(client, row.tag, "/")
    venv = du_bytes(client, row.tag, "/opt/venv")
    ratio = size / rootfs
    return {
        "image": row.key,
        "tag": row.tag,
        "size_mb": round(size / MB, 1),
        "payload_mb": round(rootfs / MB, 1),
        "base_mb": round(image_size(client, row.base_image) / MB, 1),
        "venv_mb": round(venv / MB, 1),
        "size_over_payload": round(ratio, 3),
        "size_target": SIZE_TARGET,
        "size_ok": ratio <= SIZE_TARGET,
        "size_budget_mb": row.size_budget_mb,
        "budget_ok": size / MB <= row.size_budget_mb,
    }


def measure_cold(client: Any, row: ImageRow, builder: Any, work: Path) -> dict[str, Any]:
    """Wheel download into an empty wheelhouse, then a build with no layer cache."""
    context = snapshot_context(work / f"cold-{row.key}")
    tag = f"envkit-images-bench/cold:{row.key}"
    started = time.perf_counter()
    ensure_wheelhouse([row], context / "pyproject.toml", context / "wheelhouse")
    wheels_s = time.perf_counter() - started
    try:
        plan = plan_build(row, context=context, tag=tag, wheelhouse=context / "wheelhouse")
        result = run_build(plan, builder, work / f"{row.key}-cold.log", no_cache=True)
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(tag)
    return {
        "image": row.key,
        "wheelhouse_s": round(wheels_s, 1),
        "build_s": round(result.seconds, 1),
        "cold_total_s": round(wheels_s + result.seconds, 1),
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
        "rebuild_target_s": REBUILD_TARGET_S[row.variant],
        "rebuild_ok": code["seconds"] <= REBUILD_TARGET_S[row.variant] and changed == 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench-images.json"))
    parser.add_argument("--no-rebuild", action="store_true", help="Measure sizes only.")
    parser.add_argument("--cold", action="store_true", help="Also time a cold build of each row.")
    parser.add_argument("--rows", default="", help="Comma-separated row keys (default: every row).")
    args = parser.parse_args()

    client = docker.from_env(timeout=900)
    builder = find_builder(engine_kind(client))
    matrix = load_matrix()
    root = source_root()
    wheelhouse = root / "wheelhouse"
    wanted = {k.strip() for k in args.rows.split(",") if k.strip()}
    rows = [r for r in matrix.images if not wanted or r.key in wanted]
    unknown = wanted - {r.key for r in matrix.images}
    if unknown:
        raise SystemExit(f"error: --rows {','.join(sorted(unknown))}: no such row; see `envkit images list`")
    ensure_wheelhouse(rows, root / "pyproject.toml", wheelhouse)
    for row in rows:
        try:
            client.images.get(row.tag)
        except docker.errors.ImageNotFound:
            plan = plan_build(row, wheelhouse=wheelhouse)
            run_build(plan, builder, root / "build" / "images" / f"{row.key}-runtime.log")

    sizes = [measure_size(client, row) for row in rows]
    rebuilds = []
    colds = []
    with tempfile.TemporaryDirectory(prefix="envkit-bench-images-") as tmp:
        if not args.no_rebuild:
            rebuilds = [measure_rebuild(client, row, builder, wheelhouse, Path(tmp)) for row in rows]
        if args.cold:
            colds = [measure_cold(client, row, builder, Path(tmp)) for row in rows]

    report = {
        "benchmark": "images",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.node(), "cpus": os.cpu_count(), "builder": builder.kind},
        "sizes": sizes,
        "rebuilds": rebuilds,
        "cold_builds": colds,
        "all_ok": all(s["size_ok"] and s["budget_ok"] for s in sizes)
        and all(r["rebuild_ok"] for r in rebuilds),
    }
    atomic_write_json(args.out, report)
    for s in sizes:
        print(
            f"{s['image']:>18}: {s['size_mb']:7.0f} MB = {s['size_over_payload']:.3f}x payload "
            f"({s['payload_mb']:.0f} MB, venv {s['venv_mb']:.0f}); budget {s['size_budget_mb']} MB"
        )
    for r in rebuilds:
        print(
            f"{r['image']:>18}: rebuild {r['no_change_rebuild_s']:.1f} s unchanged, "
            f"{r['code_change_rebuild_s']:.1f} s after a code-only change "
            f"({r['code_change_layers_changed']}/{r['layers']} layers changed)"
        )
    for c in colds:
        print(f"{c['image']:>18}: cold {c['cold_total_s']:.0f} s (wheels {c['wheelhouse_s']:.0f} s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
