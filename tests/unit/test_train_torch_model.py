"""The PyTorch GPT and engine: contract names, causality, counts, FLOPs, optimisation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.core.config import ModelConfig, TrainConfig  # noqa: E402
from training.core.metrics import flops_per_token  # noqa: E402
from training.engines.base import ClsBatch, DistInfo, LMBatch, OptimSpec  # noqa: E402
from training.engines.torch_engine import TorchEngine  # noqa: E402
from training.engines.torch_engine.model import GPT  # noqa: E402

SMALL = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def _engine(task="lm", model=SMALL, **cfg_kwargs) -> TorchEngine:
    cfg = TrainConfig(model=model, threads=1, **cfg_kwargs)
    eng = TorchEngine(cfg, DistInfo())
    eng.build(task, model, pad_id=0, weights=None, optim=OptimSpec(weight_decay=0.0))
    return eng


def _lm_batch(seed: int, b: int = 4, t: int = 16, v: int = 97) -> LMBatch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, size=(b, t + 1))
    return LMBatch(ids[:, :-1], ids[:, 1:])


def test_state_dict_names_follow_the_contract():
    model = GPT(SMALL, task="cls")
    names = dict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    c = SMALL.n_embd
    expected = {"wte.weight": (97, c), "wpe.weight": (16, c), "ln_f.weight": (c,), "ln_f.bias": (c,),
                "cls_head.weight": (2, c), "cls_head.bias": (2,)}  # fmt: skip
    for i in range(SMALL.n_layer):
        p = f"h.{i}."
        expected.update({
            p + "ln_1.weight": (c,), p + "ln_1.bias": (c,), p + "ln_2.weight": (c,), p + "ln_2.bias": (c,),
            p + "attn.c_attn.weight": (3 * c, c), p + "attn.c_attn.bias": (3 * c,),
            p + "attn.c_proj.weight": (c, c), p + "attn.c_proj.bias": (c,),
            p + "mlp.c_fc.weight": (4 * c, c), p + "mlp.c_fc.bias": (4 * c,),
            p + "mlp.c_proj.weight": (c, 4 * c), p + "mlp.c_proj.bias": (c,),
        })  # fmt: skip
    assert names == expected


def _closed_form(v: int, t: int, c: int, layers: int) -> int:
    per_block = 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
    return v * c + t * c + layers * per_block + 2 * c  # the tied LM head adds nothing


def test_parameter_count_matches_the_closed_form():
    model = GPT(SMALL)
    total = _closed_form(97, 16, 32, 2)
    assert model.num_params(exclude_position=False) == total
    assert model.num_params() == total - 16 * 32
    # the same closed form gives GPT-2 small's well-known 124,439,808 (50257 tokens, 1024 context)
    assert _closed_form(50257, 1024, 768, 12) == 124_439_808


def test_future_tokens_do_not_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_classifier_ignores_right_padding():
    torch.manual_seed(0)
    model = GPT(SMALL, task="cls", pad_id=0).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0, 0]])
    longer = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(longer)
    torch.testing.assert_close(a, b)


def test_analytic_flops_within_two_percent_of_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128)
    model = GPT(cfg)
    x = torch.randint(0, 512, (2, 64))
    # the fused CPU attention kernel has no FLOP formula; the math backend shows its matmuls
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    measured = counter.get_total_flops() / x.numel()
    analytic = flops_per_token(cfg, model.num_params())
    assert analytic == pytest.approx(measured, rel=0.02)


def test_loss_goes_down_and_one_batch_can_be_memorised():
    eng = _engine()
    batch = _lm_batch(0)
    eng.set_lr(3e-3)
    first = eng.train_step([batch], grad_clip=1.0).loss
    assert first == pytest.approx(np.log(97), rel=0.05)  # near-uniform predictions at init
    for _ in range(150):
        last = eng.train_step([batch], grad_clip=1.0).loss
    assert last < 0.1 * first
    assert eng.eval_step(batch).loss_sum / batch.x.size < 0.1 * first


def test_gradient_accumulation_equals_the_large_batch():
    big = _lm_batch(1, b=8)
    halves = [LMBatch(big.x[:4], big.y[:4]), LMBatch(big.x[4:], big.y[4:])]
    a, b = _engine(), _engine()
    for eng in (a, b):
        eng.set_lr(1e-2)
    ra = a.train_step([big], grad_clip=1.0)
    rb = b.train_step(halves, grad_clip=1.0)
    assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
    assert ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-4)
    wa, wb = a.export_weights(), b.export_weights()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_leaves_the_weights_untouched():
    eng = _engine()
    before = eng.export_weights()
    with torch.no_grad():
        eng.raw.wte.weight[3, 0] = float("nan")
    poisoned = eng.export_weights()
    batch = LMBatch(np.full((2, 16), 3), np.full((2, 16), 4))
    eng.set_lr(1e-2)
    result = eng.train_step([batch], grad_clip=1.0)
    assert result.skipped and not np.isfinite(result.loss)
    after = eng.export_weights()
    for k in before:
        np.testing.assert_array_equal(after[k], poisoned[k])


def test_weight_decay_skips_biases_norms_and_embeddings():
    eng = _engine()
    eng.opt = eng._make_optimizer(OptimSpec(weight_decay=0.1))
    decayed = {id(p) for g in eng.opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in eng.raw.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in names)


def test_export_import_round_trip_and_classifier_from_backbone():
    lm = _engine()
    lm.set_lr(1e-2)
    lm.train_step([_lm_batch(2)], grad_clip=1.0)
    weights = lm.export_weights()
    assert all(v.dtype == np.float32 for v in weights.values()) and "cls_head.weight" not in weights
    cls = TorchEngine(TrainConfig(model=SMALL, threads=1), DistInfo())
    cls.build("cls", SMALL, pad_id=0, weights=weights, optim=OptimSpec(0.0))
    got = cls.export_weights()
    for k, v in weights.items():
        np.testing.assert_array_equal(got[k], v)
    out = cls.eval_step(ClsBatch(np.array([[5, 6, 0, 0]]), np.array([1])))
    assert out.logits.shape == (1, 2) and out.count == 1
    bad = dict(weights)
    bad["wte.weight"] = np.zeros((5, 5), np.float32)
    with pytest.raises(Exception, match=r"wte\.weight has shape"):
        cls.import_weights(bad, strict=False)
