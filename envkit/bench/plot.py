"""`--plot`: TFLOP/s against shape per backend and dtype, as a PNG (matplotlib imported lazily)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from envkit.bench.report import atomic_write_bytes


def plot_matmul(doc: dict[str, Any], path: Path) -> None:
    """Draw one line per (backend, dtype, device) over the shapes, ordered by FLOPs."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    runs = [r for r in doc["results"] if any(s["status"] == "ok" for s in r["shapes"])]
    shapes = sorted(
        {(s["m"], s["n"], s["k"]) for r in runs for s in r["shapes"] if s["status"] == "ok"},
        key=lambda t: (t[0] * t[1] * t[2], t),
    )
    position = {shape: i for i, shape in enumerate(shapes)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(shapes) + 3), 4.5), dpi=110)
    several_devices = len({r["device"] for r in runs}) > 1
    for run in runs:
        points = [
            (
                position[(s["m"], s["n"], s["k"])],
                s["tflops"]["median"],
                s["tflops"]["min"],
                s["tflops"]["max"],
            )
            for s in run["shapes"]
            if s["status"] == "ok"
        ]
        points.sort()
        xs = [p[0] for p in points]
        label = f"{run['backend']} {run['dtype']}" + (f" ({run['device']})" if several_devices else "")
        line = ax.plot(xs, [p[1] for p in points], marker="o", label=label)[0]
        # the band between the slowest and fastest call shows the spread honestly
        ax.fill_between(
            xs, [p[2] for p in points], [p[3] for p in points], color=line.get_color(), alpha=0.15
        )
        if run.get("peak_tflops"):
            ax.axhline(run["peak_tflops"], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([f"{m}x{n}x{k}" for m, n, k in shapes], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("shape M x N x K")
    ax.set_ylabel("TFLOP/s (median; band: min-max)")
    names = sorted({r["device_name"] for r in runs})
    ax.set_title(f"envkit bench matmul: {', '.join(names)}"[:110], fontsize=10)
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
