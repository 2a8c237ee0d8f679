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

    overrides = [f"run_dir={tmp_path}/run", "device=gpu", "dtype=bf16", "compile=true", "max_steps=60"]
    cfg = resolve_config("tiny", None, [*overrides, "eval_every=30", "ft_epochs=1", "progress=off"])
    prepare(cfg)
    pre = loop.pretrain(cfg)
    assert pre.status == "completed"
    assert pre.metrics["device"]["kind"] == "gpu" and pre.metrics["device"]["dtype"] == "bf16"
    records = [r for r in read_metrics(tmp_path / "run") if r.get("stage") == "pretrain" and "loss" in r]
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["peak_mem_mb"] > 0
    name = torch.cuda.get_device_name(0)
    from envkit.matrix import load_matrix

    if load_matrix().gpu(name) is not None:
        assert 0 < records[-1]["mfu"] < 1
    else:  # a GPU missing from the matrix says why its MFU is n/a
        assert pre.metrics["device"]["peak_note"]
    weights = ckpt.load_weights(tmp_path / "run" / "checkpoints" / "last")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights)  # compile's prefix stripped
    assert all(v.dtype == np.float32 for v in weights.values())
    ft = loop.finetune(cfg)
    assert ft.status == "completed" and 0 <= ft.metrics["best_val_accuracy"] <= 1


def test_fp16_uses_a_grad_scaler_and_reports_the_steps_it_skipped():
    torch = pytest.importorskip("torch")
    from training.core.config import ModelConfig, TrainConfig
    from training.engines.base import DistInfo, LMBatch, OptimSpec
    from training.engines.torch_engine import TorchEngine

    model = ModelConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=64)
    eng = TorchEngine(TrainConfig(model=model, device="gpu", dtype="fp16"), DistInfo())
    eng.build("lm", model, 0, None, OptimSpec(0.1))
    eng.set_lr(1e-3)
    eng.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)  # the first steps overflow fp16
    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, size=(8, 33))
    batch = LMBatch(w[:, :-1], w[:, 1:])
    losses, skipped, backed_off = [], [], []
    for _ in range(60):
        before = eng.scaler.get_scale()
        res = eng.train_step([batch], 1.0)
        losses.append(res.loss)
        skipped.append(res.skipped)
        backed_off.append(eng.scaler.get_scale() < before)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert skipped == backed_off and skipped[0] and not skipped[-1]  # a skip is exactly a back-off


def test_dtype_auto_follows_the_compute_capability():
    torch = pytest.importorskip("torch")
    from training.core.config import TrainConfig
    from training.engines.torch_engine.engine import _pick_dtype

    device = torch.device("cuda", 0)
    native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
    assert _pick_dtype(TrainConfig(device="gpu"), device) == ("bf16" if native_bf16 else "fp16")
