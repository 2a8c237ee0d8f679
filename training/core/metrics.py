"""Metrics: classification scores, model FLOPs, and the metrics log (JSONL + TensorBoard)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.core.config import ModelConfig


def classification_metrics(preds: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix.

    confusion[i][j] counts examples of true class i predicted as class j. For two
    classes `precision`, `recall`, `f1` are those of the second (positive) class;
    otherwise they are macro averages.
    """
    k = len(classes)
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (labels.astype(np.int64), preds.astype(np.int64)), 1)
    tp = np.diag(conf).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(conf.sum(0) > 0, tp / conf.sum(0), 0.0)
        recall = np.where(conf.sum(1) > 0, tp / conf.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    n = int(conf.sum())
    pick = (lambda a: float(a[1])) if k == 2 else (lambda a: float(a.mean()))
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision": pick(precision),
        "recall": pick(recall),
        "f1": pick(f1),
        "macro_f1": float(f1.mean()),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
            for i, c in enumerate(classes)
        },
        "classes": list(classes),
        "confusion": conf.tolist(),
    }


def flops_per_token(model: ModelConfig, n_params: int) -> float:
    """Causal-LM training FLOPs per token: 6N + 12·L·H·Q·T (forward + backward).

    N = parameters without position embeddings (the tied token embedding counts
    once, as the LM head's matmul); L layers, H heads, Q head size, T context. The
    second term is attention's QKᵀ and AV over the full T×T score matrix (PaLM's
    convention, appendix B: no discount for the causal mask).
    """
    cfg = model
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size


def classifier_step_flops(
    model: ModelConfig, matmul_params: int, ids: np.ndarray, pad_id: int
) -> tuple[int, float]:
    """(real tokens, training FLOPs) of one classification batch.

    The classifier computes no LM head, and the token embedding is a lookup, so
    N = `matmul_params` (blocks, final norm, classifier head). A row of n real
    (non-pad) tokens costs 6·N·n + 12·L·H·Q·n² (attention over its n×n scores,
    the same full-matrix convention as `flops_per_token`); padding is not counted.
    """
    lengths = (np.asarray(ids) != pad_id).sum(axis=1).astype(np.float64)
    width = model.n_head * model.head_dim
    flops = 6.0 * matmul_params * lengths.sum() + 12.0 * model.n_layer * width * float((lengths**2).sum())
    return int(lengths.sum()), float(flops)


def perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 50.0)))


class MetricsLog:
    """Append records to metrics.jsonl and scalars to TensorBoard events (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        self._tb_file = None
        if enabled:
            from tensorboard.compat.proto import event_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter

            tb_dir = run_dir / "tb"
            tb_dir.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.envkit.{id(self)}"
            self._tb_file = open(tb_dir / name, "wb")  # noqa: SIM115 (closed in close())
            self._tb = RecordWriter(self._tb_file)
            self._event_pb2 = event_pb2
            self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write_event(self, event) -> None:
        self._tb.write(event.SerializeToString())
        self._tb_file.flush()

    def log(self, record: dict[str, Any]) -> None:
        """One record: must carry `stage` and `step`; numeric fields also go to TensorBoard."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        from tensorboard.compat.proto import summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=f"{record['stage']}/{k}", simple_value=float(v))
            for k, v in record.items()
            if k not in ("time", "step", "stage", "epoch")
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and v is not None
            and math.isfinite(float(v))
        ]
        if values:
            self._write_event(
                self._event_pb2.Event(
                    wall_time=time.time(), step=int(record["step"]), summary=summary_pb2.Summary(value=values)
                )
            )

    def close(self) -> None:
        if self._tb_file is not None:
            self._tb_file.close()
            self._tb_file = None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of run_dir/metrics.jsonl (a torn last line from a kill is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
