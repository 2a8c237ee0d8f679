"""GPU check of the PyTorch engine: MFU of the `gpt2-124m` preset in bf16 with torch.compile.

Self-contained (torch + this repository, no network, no data files): random token
batches, the engine's own `train_step` (fused AdamW, clipping, autocast, SDPA flash
attention), timed after a compile warm-up with CUDA synchronisation. MFU uses the
engine's analytic FLOPs per token (6N + 12·L·H·Q·T) and the GPU's dense bf16 peak
from the version matrix. A second, short part runs the real loop (`pretrain` +
`finetune` + `test` of the tiny preset on embedded data) on the GPU.

    python benchmarks/gpu_train_check.py --out results/gpu-train-check.json   # ~2 min on an H100/H200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure_mfu(
    preset: str, batch_size: int, steps: int, warmup: int, compile_model: bool, device: str = "cuda"
) -> dict[str, Any]:
    import numpy as np
    import torch

    from training.core.config import resolve_config
    from training.core.metrics import flops_per_token
    from training.engines.base import DistInfo, LMBatch, OptimSpec
    from training.engines.torch_engine import TorchEngine

    cfg = resolve_config(preset, None, [f"device={device}", "dtype=bf16", f"compile={compile_model}"])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    engine = TorchEngine(cfg, DistInfo())
    engine.build(
        "lm", cfg.model, 0, None, OptimSpec(cfg.pretrain.weight_decay, cfg.optim.beta1, cfg.optim.beta2)
    )
    engine.set_lr(cfg.pretrain.lr)
    rng = np.random.default_rng(0)
    T, V = cfg.model.block_size, cfg.model.vocab_size
    batches = []
    for _ in range(4):  # a few distinct batches, cycled
        w = rng.integers(0, V, size=(batch_size, T + 1), dtype=np.int64)
        batches.append(LMBatch(w[:, :-1], w[:, 1:]))
    t_compile = time.perf_counter()
    losses = []
    for i in range(warmup):
        losses.append(engine.train_step([batches[i % 4]], cfg.optim.grad_clip).loss)
    sync()
    compile_s = time.perf_counter() - t_compile
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        losses.append(engine.train_step([batches[i % 4]], cfg.optim.grad_clip).loss)
    sync()
    seconds = time.perf_counter() - t0
    tokens = steps * batch_size * T
    info = engine.device_info()
    fpt = flops_per_token(cfg.model, engine.num_params())
    tps = tokens / seconds
    achieved = tps * fpt / 1e12
    return {
        "preset": preset,
        "device": info.name,
        "dtype": info.dtype,
        "compile": compile_model,
        "params_no_wpe": engine.num_params(),
        "batch_size": batch_size,
        "block_size": T,
        "steps": steps,
        "warmup_and_compile_s": round(compile_s, 1),
        "step_ms": 1000 * seconds / steps,
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "achieved_tflops": achieved,
        "peak_tflops": info.peak_tflops,
        "peak_note": info.peak_note,
        "mfu": achieved / info.peak_tflops if info.peak_tflops else None,
        "peak_mem_gb": engine.peak_memory_bytes() / 1e9,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_finite": all(np.isfinite(losses)),
        "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled() if device == "cuda" else None,
    }


def tiny_cycle_on_gpu() -> dict[str, Any]:
    """The real loop on the GPU: tiny preset, embedded data, a short budget."""
    from training.core import loop
    from training.core.config import resolve_config
    from training.core.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config("tiny", None, [f"run_dir={tmp}/run", "device=gpu", "max_steps=200",
                                            "ft_epochs=2", "progress=off", "threads=0"])  # fmt: skip
        t0 = time.perf_counter()
        prepare(cfg)
        pre = loop.pretrain(cfg)
        ft = loop.finetune(cfg)
        test = loop.test(cfg)
        return {
            "seconds": round(time.perf_counter() - t0, 1),
            "dtype": pre.metrics["device"]["dtype"],
            "pretrain_status": pre.status,
            "val_loss": pre.metrics.get("best_val_loss"),
            "mfu_tiny": pre.metrics.get("mfu"),
            "finetune_best_val_accuracy": ft.metrics["best_val_accuracy"],
            "test_accuracy": test.metrics["classification"]["accuracy"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences of block_size per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps (torch.compile happens here)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--skip-cycle", action="store_true")
    parser.add_argument("--out", default="results/gpu-train-check.json")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"benchmark": "gpu-train-check", "torch": torch.__version__,
                           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)}  # fmt: skip
    out["mfu_check"] = measure_mfu(args.preset, args.batch_size, args.steps, args.warmup, not args.no_compile)
    m = out["mfu_check"]
    mfu = f"{m['mfu']:.1%}" if m["mfu"] is not None else f"n/a ({m['peak_note']})"
    print(f"{args.preset} on {m['device']} ({m['dtype']}, compile={m['compile']}): "
          f"{m['tokens_per_s']:,.0f} tok/s, {m['achieved_tflops']:.0f} TFLOP/s, MFU {mfu}, "
          f"{m['step_ms']:.0f} ms/step, peak {m['peak_mem_gb']:.1f} GB", flush=True)  # fmt: skip
    out["target_mfu"] = 0.45
    out["meets_target"] = bool(m["mfu"] and m["mfu"] >= 0.45)
    if not args.skip_cycle:
        out["tiny_cycle"] = tiny_cycle_on_gpu()
        print(f"tiny cycle on GPU: {out['tiny_cycle']}", flush=True)
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "8")
    raise SystemExit(main())
