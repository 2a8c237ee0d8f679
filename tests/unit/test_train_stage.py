"""The stage loop's parts: TrainState and old manifests, FLOPs, dtype choice, fp16 skipped steps.

Expected values come from outside our code: the manifests below are verbatim (config
elided) from checkpoints the code before the stage loop wrote; the classifier's FLOPs
are counted from the PyTorch model's own parameters; a V100/T4 is a device whose
compute capability is 7.x and for which `torch.cuda.is_bf16_supported()` says True
(it counts emulation unless `including_emulation=False`); torch's GradScaler skips a
step whose unscaled gradients hold inf/NaN and halves its scale (backoff_factor 0.5).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.core.config import ModelConfig, TrainConfig
from training.core.metrics import classifier_step_flops, flops_per_token
from training.core.stage import ThroughputWindow, TrainState, Work
from training.engines.base import DeviceInfo, DistInfo, LMBatch, OptimSpec

# As written by envkit before the stage loop (format envkit-checkpoint/1), config elided.
V1_PRETRAIN = {
    "best_val_loss": 5.3636298179626465, "classes": ["negative", "positive"],
    "created": "2026-12-02T07:42:57Z", "cursor": {"step": 4}, "engine": "pytorch", "evals_since_best": 0,
    "format": "envkit-checkpoint/1",
    "metrics": {"best_step": 4, "best_val_loss": 5.3636298179626465, "final_loss": 5.451607704162598,
                "mfu": None, "tokens_per_s": 15224.65268539993, "train_loss": 5.451607704162598,
                "val_loss": 5.3636298179626465, "val_ppl": 213.49850236551475},
    "name": "last", "pad_id": 1, "seeds": {"seed": 1337}, "stage": "pretrain", "status": "completed",
    "step": 4, "world_size": 1,
}  # fmt: skip
V1_FINETUNE = {
    "best_epoch": 1, "best_val_accuracy": 0.43333333333333335, "best_val_f1": 0.6046511627906976,
    "classes": ["negative", "positive"], "created": "2026-12-02T07:42:58Z",
    "cursor": {"epoch": 1, "index": 0}, "engine": "pytorch", "epochs_since_best": 0,
    "format": "envkit-checkpoint/1",
    "history": [{"epoch": 1, "val_accuracy": 0.43333333333333335, "val_f1": 0.6046511627906976,
                 "val_loss": 0.6963021596272786}],
    "init": "pretrained", "init_from": "/tmp/htrain/oldrun/checkpoints/best",
    "metrics": {"epoch": 1, "val_accuracy": 0.43333333333333335, "val_f1": 0.6046511627906976,
                "val_loss": 0.6963021596272786},
    "name": "finetune-last", "pad_id": 1, "seeds": {"seed": 1337}, "stage": "finetune",
    "status": "completed", "step": 3, "world_size": 1,
}  # fmt: skip


def test_old_pretrain_manifest_migrates_into_the_train_state():
    state = TrainState.from_manifest(V1_PRETRAIN, step=4)
    assert (state.step, state.status) == (4, "completed")
    assert state.best_value == pytest.approx(5.3636298179626465) and state.best_step == 4
    assert state.since_best == 0 and state.metrics["val_ppl"] == pytest.approx(213.4985, rel=1e-6)
    assert state.improved(5.0, "min") and not state.improved(5.4, "min")


def test_old_finetune_manifest_migrates_into_the_train_state():
    state = TrainState.from_manifest(V1_FINETUNE, step=3)
    assert state.best_value == pytest.approx(0.43333333333333335)
    assert state.best_record["val_f1"] == pytest.approx(0.6046511627906976)
    assert state.best_record["epoch"] == 1 and len(state.history) == 1
    assert state.improved(0.5, "max") and not state.improved(0.4, "max")
    # -1 meant "no evaluation yet" in the old layout
    fresh = TrainState.from_manifest({**V1_FINETUNE, "best_val_accuracy": -1.0}, step=0)
    assert fresh.best_value is None and fresh.improved(0.0, "max")


def test_train_state_round_trips_through_a_v2_manifest():
    state = TrainState(step=7, best_value=0.9, best_step=5, best_record={"val_accuracy": 0.9}, since_best=2)
    state.skipped_steps, state.history = 3, [{"epoch": 1}]
    manifest = {
        "format": "envkit.checkpoint/v2",
        "status": "preempted",
        "metrics": {"loss": 1.0},
        "history": state.history,
        "state": state.to_manifest(),
    }
    again = TrainState.from_manifest(manifest, step=7)
    assert again.to_manifest() == state.to_manifest() and again.status == "preempted"
    assert again.history == [{"epoch": 1}] and again.metrics == {"loss": 1.0}


class _Engine:
    """Only what ThroughputWindow reads: the device's peak."""

    def __init__(self, peak: float | None) -> None:
        self.peak = peak

    def device_info(self) -> DeviceInfo:
        return DeviceInfo("gpu", "test", "bf16", self.peak, None if self.peak else "unknown GPU")

    def peak_memory_bytes(self) -> int | None:
        return None


def test_throughput_window_mfu_is_flops_per_second_over_peak_and_ranks():
    window = ThroughputWindow()
    window.add(0.5, Work(tokens=1000, flops=2e12), skipped=False)
    window.add(0.5, Work(tokens=1000, flops=2e12), skipped=True)
    rec = window.record(_Engine(peak=1.0), world_size=2)  # 1 TFLOP/s peak per rank
    assert rec["tokens_per_s"] == pytest.approx(2000.0)
    assert rec["mfu"] == pytest.approx(4e12 / 1.0 / (1e12 * 2))
    assert rec["skipped_steps"] == 1 and rec["step_ms"] == pytest.approx(500.0)
    assert window.steps == 0  # a record starts the next window
    window.add(1.0, Work(1, 1.0), skipped=False)
    assert window.record(_Engine(peak=None), 1)["mfu"] is None


torch = pytest.importorskip("torch")

from training.engines.torch_engine import engine as torch_engine  # noqa: E402
from training.engines.torch_engine.model import GPT  # noqa: E402

SMALL = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def test_classifier_flops_count_no_lm_head_and_no_padding():
    model = GPT(SMALL, task="cls", pad_id=0)
    # the matmuls the classifier runs: every parameter except the token/position lookups
    matmul = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("wte.", "wpe.")))
    engine_count = model.num_params() - SMALL.vocab_size * SMALL.n_embd
    assert engine_count == matmul
    ids = np.array([[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]])  # 3 and 6 real tokens, pad_id 0
    tokens, flops = classifier_step_flops(SMALL, matmul, ids, pad_id=0)
    attention = 12 * SMALL.n_layer * SMALL.n_embd * (3**2 + 6**2)  # full n x n scores per row
    assert tokens == 9 and flops == pytest.approx(6 * matmul * 9 + attention)
    # what the LM formula would claim for the same batch: tied head and padding counted
    claimed = flops_per_token(SMALL, model.num_params()) * ids.size
    assert claimed / flops > 1.3


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
)
def test_dtype_auto_picks_bf16_only_where_it_is_native(monkeypatch, capability, expected):
    # torch.cuda.is_bf16_supported() counts emulation: it says True on a V100/T4 too
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cfg = TrainConfig(dtype="auto")
    assert torch_engine._pick_dtype(cfg, torch.device("cuda", 0)) == expected
    assert torch_engine._pick_dtype(cfg, torch.device("cpu")) == "fp32"
    assert torch_engine._pick_dtype(TrainConfig(dtype="float32"), torch.device("cuda", 0)) == "fp32"


def test_a_gpu_missing_from_the_matrix_says_why_mfu_is_na(monkeypatch):
    eng = torch_engine.TorchEngine.__new__(torch_engine.TorchEngine)
    eng.device, eng.dtype, eng._device_info = torch.device("cuda", 0), "bf16", None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Imaginary 9000")

    class Props:
        multi_processor_count = 100

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Props())
    info = eng.device_info()
    assert info.kind == "gpu" and info.peak_tflops is None
    assert "unknown GPU 'NVIDIA Imaginary 9000'" in (info.peak_note or "")


def _fp16_cpu_engine() -> torch_engine.TorchEngine:
    eng = torch_engine.TorchEngine(
        TrainConfig(model=SMALL, threads=1, dtype="fp16", device="cpu"), DistInfo()
    )
    eng.build("lm", SMALL, 0, None, OptimSpec(0.1))
    eng.set_lr(1e-3)
    return eng


def test_an_fp16_step_the_grad_scaler_skipped_is_reported_as_skipped():
    eng = _fp16_cpu_engine()
    # a scale so large that the scaled gradients overflow fp16 while the loss stays finite
    eng.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    rng = np.random.default_rng(0)
    w = rng.integers(0, SMALL.vocab_size, size=(4, SMALL.block_size + 1))
    batch = LMBatch(w[:, :-1], w[:, 1:])
    before = eng.export_weights()
    res = eng.train_step([batch], grad_clip=1.0)
    assert math.isfinite(res.loss) and res.skipped
    assert eng.scaler.get_scale() == 2.0**39  # backed off by half
    after = eng.export_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # no update applied
    # once the scale fits, steps apply again
    for _ in range(40):
        res = eng.train_step([batch], grad_clip=1.0)
        if not res.skipped:
            break
    assert not res.skipped and math.isfinite(res.grad_norm)
    assert any(not np.array_equal(before[k], v) for k, v in eng.export_weights().items())
