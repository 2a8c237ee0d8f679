"""Pretraining tokens/s of the TensorFlow engine next to a plain Keras `model.fit` of the same model.

`benchmarks/throughput.py` (the PyTorch engine's benchmark) calls `contenders()`
when TensorFlow is importable and runs them on the same batches, threads and
model shape as its PyTorch contenders, in the same run. Run alone, this file
benchmarks just the TensorFlow side on random token batches:

    python benchmarks/throughput_tf.py --preset tiny --steps 40 --out results/throughput-tf.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Batches = list[tuple[np.ndarray, np.ndarray]]
RunFn = Callable[[Batches, int], dict[str, Any]]


def _engine_contender(model_cfg: Any, lr: float, seed: int, threads: int, xla: bool) -> RunFn:
    def run(batches: Batches, warmup: int) -> dict[str, Any]:
        from training.core.config import ModelConfig, TrainConfig
        from training.engines.base import DistInfo, LMBatch, OptimSpec
        from training.engines.tf_engine import TFEngine

        model = ModelConfig(**{k: getattr(model_cfg, k) for k in ModelConfig.model_fields})
        cfg = TrainConfig(model=model, runtime={"seed": seed, "threads": threads, "device": "auto"})
        previous = os.environ.get("ENVKIT_TF_XLA")
        os.environ["ENVKIT_TF_XLA"] = "1" if xla else "0"
        try:
            engine = TFEngine(cfg, DistInfo())
        finally:
            if previous is None:
                os.environ.pop("ENVKIT_TF_XLA")
            else:
                os.environ["ENVKIT_TF_XLA"] = previous
        engine.build("lm", model, 0, None, OptimSpec(weight_decay=0.1))
        engine.set_lr(lr)
        losses = []
        t0 = c0 = 0.0
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                t0, c0 = time.perf_counter(), process_cpu_seconds()
            losses.append(engine.train_step([LMBatch(x, y)], grad_clip=1.0).loss)  # float(): synchronises
        seconds, cpu = time.perf_counter() - t0, process_cpu_seconds() - c0
        return _result(batches, warmup, seconds, cpu, losses, engine.jit_compile)

    return run


def _keras_fit_contender(model_cfg: Any, lr: float, seed: int, xla: bool | str) -> RunFn:
    def run(batches: Batches, warmup: int) -> dict[str, Any]:
        import keras
        import tensorflow as tf

        from training.engines.tf_engine.model import GPT

        class LMForFit(keras.Model):
            """The engine's GPT as a plain Keras model: ids -> LM logits, trained by compile/fit."""

            def __init__(self) -> None:
                super().__init__()
                self.gpt = GPT(model_cfg, seed=seed).build_all()
                self.seeds = keras.random.SeedGenerator(seed)

            def call(self, ids: Any, training: bool = False) -> Any:
                drop_seed = tf.cast(self.seeds.next(), tf.int32) if training and model_cfg.dropout else None
                return self.gpt.lm_logits(self.gpt(ids, training=training, dropout_seed=drop_seed))

        model = LMForFit()
        model.compile(
            optimizer=keras.optimizers.AdamW(
                learning_rate=lr, weight_decay=0.1, beta_1=0.9, beta_2=0.95, epsilon=1e-8, global_clipnorm=1.0
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=xla,
        )
        xs = np.stack([x for x, _ in batches]).astype(np.int32)
        ys = np.stack([y for _, y in batches]).astype(np.int32)

        def dataset(lo: int, hi: int) -> tf.data.Dataset:
            return tf.data.Dataset.from_tensor_slices((xs[lo:hi], ys[lo:hi]))

        warm = model.fit(dataset(0, warmup), epochs=1, verbose=0)
        t0, c0 = time.perf_counter(), process_cpu_seconds()
        timed = model.fit(dataset(warmup, len(batches)), epochs=1, verbose=0)
        seconds, cpu = time.perf_counter() - t0, process_cpu_seconds() - c0
        losses = warm.history["loss"] + timed.history["loss"]  # per-epoch means (fit's own logging)
        return _result(batches, warmup, seconds, cpu, losses, bool(model.jit_compile))

    return run


def process_cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _result(
    batches: Batches, warmup: int, seconds: float, cpu_seconds: float, losses: list[float], xla: bool
) -> dict[str, Any]:
    timed = batches[warmup:]
    tokens = sum(int(x.size) for x, _ in timed)
    return {
        "steps": len(timed),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds if cpu_seconds > 0 else None,
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
        "xla": xla,
    }


def contenders(model: Any, lr: float = 3e-4, seed: int = 0, threads: int = 0) -> dict[str, RunFn]:
    """TensorFlow contenders for `benchmarks/throughput.py`, by name.

    `model` is a `training.core.config.ModelConfig` (or anything with its fields).
    Each value is `run(batches, warmup) -> dict`: it builds its own model (same
    shape, seeded), trains one optimizer step per `(x, y)` batch in `batches`
    (int64 [B, T] ids and next-token targets, the same list for every contender),
    leaves the first `warmup` steps untimed (tracing, XLA compilation), and
    returns `steps`, `tokens`, `seconds`, `tokens_per_s` of the timed steps, the
    process CPU time `cpu_seconds`/`tokens_per_cpu_s` (steadier on a shared
    machine), `loss_first`/`loss_last` and whether XLA was on. Contenders:

    - `tensorflow-engine`: the TF engine exactly as training runs it (`train_step`,
      XLA on by default);
    - `tensorflow-engine-no-xla`: the same with XLA off (`ENVKIT_TF_XLA=0`);
    - `keras-fit`: the same Keras GPT trained by plain `compile()` + `fit()`
      (Keras AdamW, global-norm clipping, Keras' default `jit_compile="auto"`);
    - `keras-fit-xla`: the same with `jit_compile=True`.

    Call this after `threads` is decided: TensorFlow fixes its thread pools at first use.
    """
    if threads > 0:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:
            pass  # already initialised by an earlier contender: same process, same pools
    return {
        "tensorflow-engine": _engine_contender(model, lr, seed, threads, xla=True),
        "tensorflow-engine-no-xla": _engine_contender(model, lr, seed, threads, xla=False),
        "keras-fit": _keras_fit_contender(model, lr, seed, xla="auto"),
        "keras-fit-xla": _keras_fit_contender(model, lr, seed, xla=True),
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=0, help="0 = the preset's batch_size")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--only", action="append", default=[], help="run only these contenders")
    parser.add_argument("--out", default="results/throughput-tf.json")
    args = parser.parse_args(argv)

    from training.core.config import resolve_config

    cfg = resolve_config(args.preset, None, [])
    batch = args.batch_size or cfg.pretrain.batch_size
    from throughput import (  # the same batches as the combined run (benchmarks/ is on sys.path)
        random_batches,
        write_results,
    )

    batches = random_batches(cfg.model.vocab_size, batch, cfg.model.block_size, args.warmup + args.steps)
    results: dict[str, Any] = {}
    for name, run in contenders(
        cfg.model, lr=cfg.pretrain.lr, seed=cfg.runtime.seed, threads=args.threads
    ).items():
        if args.only and name not in args.only:
            continue
        results[name] = run(batches, args.warmup)
        print(f"{name:24s} {results[name]['tokens_per_s']:>12,.0f} tokens/s", flush=True)
    import tensorflow as tf

    ratios = {
        f"{a}/{b}": results[a]["tokens_per_s"] / results[b]["tokens_per_s"]
        for a, b in (
            ("tensorflow-engine", "keras-fit"),
            ("tensorflow-engine", "keras-fit-xla"),
            ("tensorflow-engine-no-xla", "keras-fit"),
        )
        if a in results and b in results
    }
    out = {
        "benchmark": "throughput-tf",
        "preset": args.preset,
        "model": {
            k: getattr(cfg.model, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        },
        "batch_size": batch,
        "warmup": args.warmup,
        "threads": args.threads or "default",
        "tensorflow": tf.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "results": results,
        "ratios": ratios,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(out, args.out, ratios)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
