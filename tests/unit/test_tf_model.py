"""TensorFlow engine, model level: contract math, weight names, optimizer rule, accumulation.

The same safetensors weights go into the Keras model, a float64 NumPy
implementation of docs/training-contract.md, and (when installed) the PyTorch
engine's model; their fp32 logits must agree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from training.core.checkpoint import load_weights, save_weights  # noqa: E402
from training.core.config import ModelConfig, TrainConfig  # noqa: E402
from training.engines.base import ClsBatch, DistInfo, EngineError, LMBatch, OptimSpec  # noqa: E402
from training.engines.tf_engine import TFEngine  # noqa: E402

CFG = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0, n_classes=3)
PAD = 0


def contract_names(cfg: ModelConfig, with_head: bool) -> set[str]:
    names = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}
    for i in range(cfg.n_layer):
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names |= {f"h.{i}.{part}.weight", f"h.{i}.{part}.bias"}
    if with_head:
        names |= {"cls_head.weight", "cls_head.bias"}
    return names


def random_weights(cfg: ModelConfig, seed: int = 3) -> dict[str, np.ndarray]:
    """Weights far from the 0.02 init (so logits are not near-uniform), in the contract's layout."""
    rng = np.random.default_rng(seed)
    c = cfg.n_embd
    shapes = {"wte.weight": (cfg.vocab_size, c), "wpe.weight": (cfg.block_size, c)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (c,), p + "ln_1.bias": (c,), p + "ln_2.weight": (c,), p + "ln_2.bias": (c,),
            p + "attn.c_attn.weight": (3 * c, c), p + "attn.c_attn.bias": (3 * c,),
            p + "attn.c_proj.weight": (c, c), p + "attn.c_proj.bias": (c,),
            p + "mlp.c_fc.weight": (4 * c, c), p + "mlp.c_fc.bias": (4 * c,),
            p + "mlp.c_proj.weight": (c, 4 * c), p + "mlp.c_proj.bias": (c,),
        })  # fmt: skip
    shapes.update({"ln_f.weight": (c,), "ln_f.bias": (c,), "cls_head.weight": (cfg.n_classes, c)})
    shapes["cls_head.bias"] = (cfg.n_classes,)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            out[name] = (1.0 + 0.2 * rng.normal(size=shape)).astype(np.float32)
        else:
            out[name] = (0.3 * rng.normal(size=shape) / math.sqrt(shape[-1] if len(shape) > 1 else 4)).astype(
                np.float32
            )
    out["wte.weight"] *= 4.0
    return out


# --- float64 reference of the contract ------------------------------------------------------------


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w + b


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_hidden(w: dict[str, np.ndarray], ids: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, seq = ids.shape
    hd = cfg.n_embd // cfg.n_head
    x = w["wte.weight"][ids] + w["wpe.weight"][:seq]
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        h = _ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
        q, k, v = (
            t.reshape(batch, seq, cfg.n_head, hd).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1)
        )
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        att = np.where(causal, att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(batch, seq, cfg.n_embd)
        x = x + y @ w[p + "attn.c_proj.weight"].T + w[p + "attn.c_proj.bias"]
        h = _ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = _gelu_tanh(h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    return _ln(x, w["ln_f.weight"], w["ln_f.bias"])


def reference_logits(
    w: dict[str, np.ndarray], ids: np.ndarray, cfg: ModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(LM logits [B, T, V], class logits [B, n_classes]) in float64."""
    h = reference_hidden(w, ids, cfg)
    lm = h @ w["wte.weight"].astype(np.float64).T
    mask = (ids != PAD)[..., None]
    pooled = (h * mask).sum(1) / np.maximum(mask.sum(1), 1)
    cls = pooled @ w["cls_head.weight"].astype(np.float64).T + w["cls_head.bias"]
    return lm, cls


# --- fixtures ---------------------------------------------------------------------------------------


def make_engine(
    task: str, weights: dict[str, np.ndarray] | None, xla: bool = False, dtype: str = "fp32"
) -> TFEngine:
    """An engine on CPU; XLA off unless asked (its compile time would dominate these small tests)."""
    cfg = TrainConfig(model=ModelConfig(**CFG.__dict__), seed=1337, dtype=dtype)
    previous = os.environ.get("ENVKIT_TF_XLA")
    os.environ["ENVKIT_TF_XLA"] = "1" if xla else "0"
    try:
        engine = TFEngine(cfg, DistInfo())
    finally:
        os.environ.pop("ENVKIT_TF_XLA") if previous is None else os.environ.update(ENVKIT_TF_XLA=previous)
    assert engine.jit_compile == xla
    engine.build(task, cfg.model, PAD, weights, OptimSpec(weight_decay=0.1))
    return engine


@pytest.fixture(scope="module")
def shared_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """One safetensors file read back through the core, as every engine would load it."""
    path = Path(tmp_path_factory.mktemp("weights")) / "model.safetensors"
    save_weights(path, random_weights(CFG))
    return load_weights(path)


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    rng = np.random.default_rng(0)
    out = rng.integers(1, CFG.vocab_size, size=(3, CFG.block_size))
    out[1, 9:] = PAD  # right padding, as prepared classification sets are
    out[2, 4:] = PAD
    return out


@pytest.fixture(scope="module")
def cls_engine(shared_weights: dict[str, np.ndarray]) -> TFEngine:
    """One classifier engine for the forward-only tests (they never change its weights)."""
    return make_engine("cls", shared_weights)


# --- tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
def test_logits_match_the_contract_reference(
    shared_weights: dict[str, np.ndarray], ids: np.ndarray, cls_engine: TFEngine, xla: bool
) -> None:
    engine = make_engine("cls", shared_weights, xla=True) if xla else cls_engine
    want_lm, want_cls = reference_logits(shared_weights, ids, CFG)
    got_lm = engine.model.lm_logits(engine.model(tf.constant(ids))).numpy()
    got_cls = engine.eval_step(ClsBatch(ids, np.array([0, 1, 2]))).logits
    assert np.abs(want_lm).max() > 1.0, "weights too small for a meaningful comparison"
    np.testing.assert_allclose(got_lm, want_lm, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_cls, want_cls, rtol=1e-4, atol=1e-4)


def test_logits_match_the_pytorch_engine(
    shared_weights: dict[str, np.ndarray], ids: np.ndarray, cls_engine: TFEngine
) -> None:
    torch = pytest.importorskip("torch")
    torch_model = pytest.importorskip("training.engines.torch_engine.model")
    tf_engine = cls_engine
    state = {k: torch.from_numpy(v.copy()) for k, v in shared_weights.items()}
    lm = torch_model.GPT(CFG, task="lm", pad_id=PAD).eval()
    lm.load_state_dict({k: v for k, v in state.items() if not k.startswith("cls_head.")}, strict=True)
    cls = torch_model.GPT(CFG, task="cls", pad_id=PAD).eval()
    cls.load_state_dict(state, strict=True)
    with torch.no_grad():
        want_lm = lm(torch.from_numpy(ids))[0].numpy()
        want_cls = cls(torch.from_numpy(ids))[0].numpy()
    got_lm = tf_engine.model.lm_logits(tf_engine.model(tf.constant(ids))).numpy()
    got_cls = tf_engine.eval_step(ClsBatch(ids, np.array([0, 1, 2]))).logits
    np.testing.assert_allclose(got_lm, want_lm, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_cls, want_cls, rtol=1e-4, atol=1e-4)


def test_future_tokens_do_not_change_earlier_logits(cls_engine: TFEngine) -> None:
    engine = cls_engine
    rng = np.random.default_rng(1)
    a = rng.integers(1, CFG.vocab_size, size=(1, CFG.block_size))
    b = a.copy()
    b[0, 10:] = rng.integers(1, CFG.vocab_size, size=CFG.block_size - 10)
    la = engine.model.lm_logits(engine.model(tf.constant(a))).numpy()
    lb = engine.model.lm_logits(engine.model(tf.constant(b))).numpy()
    np.testing.assert_allclose(la[0, :10], lb[0, :10], rtol=1e-5, atol=1e-5)
    assert not np.allclose(la[0, 10:], lb[0, 10:])


def test_more_right_padding_leaves_class_logits_unchanged(cls_engine: TFEngine) -> None:
    engine = cls_engine
    short = np.array([[5, 6, 7, 8, PAD, PAD]])
    long = np.concatenate([short, np.full((1, 10), PAD)], axis=1)
    got_short = engine.eval_step(ClsBatch(short, np.array([1]))).logits
    got_long = engine.eval_step(ClsBatch(long, np.array([1]))).logits
    np.testing.assert_allclose(got_short, got_long, rtol=1e-5, atol=1e-5)


def test_exported_weights_use_contract_names_and_pytorch_layout(
    shared_weights: dict[str, np.ndarray], cls_engine: TFEngine, lm_engines: tuple[TFEngine, TFEngine]
) -> None:
    out = cls_engine.export_weights()
    assert set(out) == contract_names(CFG, with_head=True)
    for name, value in out.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, shared_weights[name], err_msg=name)
    assert set(lm_engines[0].export_weights()) == contract_names(CFG, with_head=False)


def test_bad_weights_are_refused_with_the_tensor_named(
    shared_weights: dict[str, np.ndarray], cls_engine: TFEngine
) -> None:
    engine = cls_engine
    before = engine.export_weights()
    wrong = dict(shared_weights)
    wrong["h.1.mlp.c_fc.weight"] = wrong["h.1.mlp.c_fc.weight"][:, :8]
    with pytest.raises(EngineError, match=r"h\.1\.mlp\.c_fc\.weight"):
        engine.import_weights(wrong)
    missing = {k: v for k, v in shared_weights.items() if k != "ln_f.bias"}
    with pytest.raises(EngineError, match=r"ln_f\.bias"):
        engine.import_weights(missing)
    # nothing was half-assigned by the refused imports
    after = engine.export_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    backbone = {k: v for k, v in shared_weights.items() if not k.startswith("cls_head.")}
    with pytest.raises(EngineError, match=r"cls_head\.weight"):
        engine.import_weights(backbone, strict=True)
    engine.import_weights(backbone, strict=False)  # a pretrained backbone: the head keeps its init
    np.testing.assert_array_equal(engine.export_weights()["cls_head.weight"], before["cls_head.weight"])


def test_adamw_follows_the_pytorch_rule() -> None:
    torch = pytest.importorskip("torch")
    from training.engines.tf_engine.optim import AdamW

    rng = np.random.default_rng(2)
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
    grads = [[rng.normal(size=p.shape).astype(np.float32) for p in init] for _ in range(5)]
    tf_vars = [tf.Variable(p) for p in init]
    opt = AdamW(tf_vars, ["w", "b"], [True, False], weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    t_params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
    t_opt = torch.optim.AdamW(
        [{"params": [t_params[0]], "weight_decay": 0.1}, {"params": [t_params[1]], "weight_decay": 0.0}],
        lr=0.0,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    for step, g in enumerate(grads):
        lr = 1e-2 * (step + 1)  # a changing LR, as the schedule sets it every step
        opt.lr.assign(lr)
        opt.apply([tf.constant(x) for x in g])
        for group in t_opt.param_groups:
            group["lr"] = lr
        for p, x in zip(t_params, g, strict=True):
            p.grad = torch.from_numpy(x.copy())
        t_opt.step()
    for v, p in zip(tf_vars, t_params, strict=True):
        np.testing.assert_allclose(v.numpy(), p.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def backbone(shared_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in shared_weights.items() if not k.startswith("cls_head.")}


@pytest.fixture(scope="module")
def lm_engines(backbone: dict[str, np.ndarray]) -> tuple[TFEngine, TFEngine]:
    """Two LM engines; tests re-import weights first, so traced steps are reused across tests."""
    return make_engine("lm", backbone), make_engine("lm", backbone)


def lm_rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, CFG.vocab_size, size=(8, CFG.block_size + 1))


def test_gradient_accumulation_equals_the_large_batch(
    lm_engines: tuple[TFEngine, TFEngine], backbone: dict[str, np.ndarray]
) -> None:
    data = lm_rows(4)
    big = LMBatch(data[:, :-1], data[:, 1:])
    halves = [LMBatch(data[:4, :-1], data[:4, 1:]), LMBatch(data[4:, :-1], data[4:, 1:])]
    one, two = lm_engines
    for engine in (one, two):
        engine.import_weights(backbone)
        engine.set_lr(1e-3)
    r1 = one.train_step([big], grad_clip=0.5)
    r2 = two.train_step(halves, grad_clip=0.5)
    assert r1.loss == pytest.approx(r2.loss, rel=1e-5)
    assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-4)
    assert r1.grad_norm > 0.5, "clipping must be active for this test to check it"
    w1, w2 = one.export_weights(), two.export_weights()
    assert any(not np.array_equal(w1[k], backbone[k]) for k in w1), "the step changed nothing"
    for k in w1:
        np.testing.assert_allclose(w1[k], w2[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_non_finite_loss_skips_the_update(
    lm_engines: tuple[TFEngine, TFEngine], backbone: dict[str, np.ndarray]
) -> None:
    engine = lm_engines[0]
    poisoned = dict(backbone)
    poisoned["ln_f.weight"] = np.full_like(backbone["ln_f.weight"], np.inf)
    engine.import_weights(poisoned)
    engine.set_lr(1e-3)
    data = lm_rows(5)
    result = engine.train_step([LMBatch(data[:, :-1], data[:, 1:])], grad_clip=1.0)
    assert result.skipped
    after = engine.export_weights()
    for k in after:
        np.testing.assert_array_equal(after[k], poisoned[k], err_msg=k)


@pytest.mark.parametrize(("dtype", "compute"), [("bf16", "bfloat16"), ("fp16", "float16")])
def test_mixed_precision_trains_close_to_float32(
    dtype: str,
    compute: str,
    lm_engines: tuple[TFEngine, TFEngine],
    backbone: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    data = lm_rows(6)
    batch = LMBatch(data[:, :-1], data[:, 1:])
    reference = lm_engines[1]
    reference.import_weights(backbone)
    want = reference.eval_step(batch).loss_sum
    engine = make_engine("lm", backbone, dtype=dtype)
    assert engine.model.h[0].mlp.c_fc.compute_dtype == compute
    assert engine.model.h[0].mlp.c_fc.kernel.dtype == "float32"  # master weights stay float32
    assert engine.eval_step(batch).loss_sum == pytest.approx(want, rel=2e-2)
    engine.set_lr(1e-3)
    result = engine.train_step([batch], grad_clip=1.0)
    assert not result.skipped and math.isfinite(result.loss)
    engine.save_state(tmp_path)
    from safetensors.numpy import load_file

    state = load_file(str(tmp_path / "optimizer.safetensors"))
    assert float(state["loss_scale"]) == (2.0**15 if dtype == "fp16" else 1.0)  # float16 only: loss scaling


def test_dense_example_loss_falls() -> None:
    from training.examples.dense import DenseExample, train_dense

    history = train_dense(DenseExample(steps=200), every=50, echo=False)
    losses = [loss for _, loss in history]
    assert losses[-1] < losses[0] / 5
    assert all(math.isfinite(x) for x in losses)


def test_an_fp16_step_the_loss_scale_skipped_is_reported_as_skipped(backbone: dict[str, np.ndarray]) -> None:
    """Keras' LossScaleOptimizer rule (our DynamicLossScale): inf gradients -> no update, scale halves."""
    engine = make_engine("lm", backbone, dtype="fp16")
    engine.scaler.scale.assign(2.0**40)  # the scaled fp16 gradients overflow; the loss itself is finite
    engine.set_lr(1e-3)
    data = lm_rows(7)
    result = engine.train_step([LMBatch(data[:, :-1], data[:, 1:])], grad_clip=1.0)
    assert math.isfinite(result.loss) and result.skipped
    assert float(engine.scaler.scale.numpy()) == 2.0**39
    after = engine.export_weights()
    for k in after:
        np.testing.assert_array_equal(after[k], backbone[k], err_msg=k)
