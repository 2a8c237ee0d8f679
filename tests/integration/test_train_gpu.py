"""GPU paths of the PyTorch engine (skipped without an NVIDIA GPU; CI has none).

The CPU twins of these checks run everywhere (test_train_cycle.py, test_train_torch_model.py).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_bf16_compiled_training_on_the_gpu_learns_and_reports_mfu(tmp_path):
    torch = pytest.importorskip("torch")
    from training.core import checkpoint as ckpt
    from training.core import loop
    from training.core.config import resolve_config
    from training.core.metrics import read_metrics
    from training.core.prepare import prepare

    overrides = [f"run_dir={tmp_path}/run", "device=cuda", "dtype=bf16", "compile=true", "max_steps=60"]
    cfg = resolve_config("tiny", None, [*overrides, "eval_every=30", "ft_epochs=1", "progress=off"])
    prepare(cfg)
    pre = loop.pretrain(cfg)
    assert pre.status == "completed"
    assert pre.metrics["device"]["kind"] == "cuda" and pre.metrics["device"]["dtype"] == "bf16"
    records = [r for r in read_metrics(tmp_path / "run") if r.get("stage") == "pretrain" and "loss" in r]
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["peak_mem_mb"] > 0
    name = torch.cuda.get_device_name(0)
    from envkit.matrix import load_matrix

    if load_matrix().gpu(name) is not None:
        assert 0 < records[-1]["mfu"] < 1
    weights = ckpt.load_weights(tmp_path / "run" / "checkpoints" / "last")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights)  # compile's prefix stripped
    assert all(v.dtype == np.float32 for v in weights.values())
    ft = loop.finetune(cfg)
    assert ft.status == "completed" and 0 <= ft.metrics["best_val_accuracy"] <= 1


def test_fp16_uses_a_grad_scaler_and_stays_finite():
    pytest.importorskip("torch")
    from training.core.config import ModelConfig, TrainConfig
    from training.engines.base import DistInfo, LMBatch, OptimSpec
    from training.engines.torch_engine import TorchEngine

    model = ModelConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=64)
    eng = TorchEngine(TrainConfig(model=model, device="cuda", dtype="fp16"), DistInfo())
    eng.build("lm", model, 0, None, OptimSpec(0.1))
    eng.set_lr(1e-3)
    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, size=(8, 33))
    batch = LMBatch(w[:, :-1], w[:, 1:])
    losses = [eng.train_step([batch], 1.0).loss for _ in range(30)]
    assert eng.scaler is not None and np.isfinite(losses).all() and losses[-1] < losses[0]
