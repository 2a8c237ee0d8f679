"""LoRA on small random Llama and GPT-2 models written in Hugging Face format; save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.core import synthetic
from training.core.config import ConfigError
from training.hf import lora
from training.hf.collate import PAD, encode_corpus, encode_rows
from training.hf.module import build_module, save_for_transformers
from training.hf.random_model import write_random_model
from training.hf.settings import HFSettings


@pytest.fixture(scope="module")
def texts():
    return synthetic.corpus(120, seed=3)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_dir(request, tmp_path_factory, texts):
    out = tmp_path_factory.mktemp(f"random-{request.param}")
    return write_random_model(out, texts, arch=request.param, vocab_size=300, hidden=32, layers=2, heads=4)


def _ids(tokenizer, texts, max_len=24):
    return torch.from_numpy(encode_rows(tokenizer, texts, max_len))


def test_target_modules_per_architecture_and_override():
    assert lora.target_modules("llama") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora.target_modules("bert") == ["query", "key", "value"]
    assert lora.target_modules("llama", ["q_proj"]) == ["q_proj"]
    assert lora.target_modules("t5")  # peft's own table covers families we do not list
    with pytest.raises(ConfigError, match=r"hf\.lora_targets"):
        lora.target_modules("no-such-architecture")


def test_lora_trains_only_adapters_and_a_bad_target_is_a_config_error(model_dir):
    module, _ = build_module(HFSettings(model=str(model_dir), task="causal_lm", mode="lora", lora_r=4))
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert module.num_params() == sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
    with pytest.raises(ConfigError, match="name no module"):
        build_module(HFSettings(model=str(model_dir), task="causal_lm", mode="lora", lora_targets=["nope"]))


def test_classification_lora_trains_the_head_too(model_dir):
    module, _ = build_module(HFSettings(model=str(model_dir), mode="lora"), num_labels=3)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert any("score" in n for n in trainable)  # the new head is saved and trained in full


def test_causal_lm_loss_ignores_padding_and_matches_transformers(model_dir, texts):
    module, tok = build_module(HFSettings(model=str(model_dir), task="causal_lm"))
    module.eval()
    stream = torch.from_numpy(encode_corpus(tok, texts[:5])[:17][None])
    x, y = stream[:, :-1], stream[:, 1:]
    with torch.no_grad():
        _, ours = module(x, y)
        # transformers shifts `labels` itself: the same window scored by the library
        ref = module.model(input_ids=stream, labels=stream).loss
        y_pad = y.clone()
        y_pad[0, -4:] = PAD
        _, masked = module(x, y_pad)
        logits = module.model(input_ids=x).logits[0, :-4]
    assert torch.allclose(ours, ref, atol=1e-5)
    # a PAD target is left out of the mean, not scored as a class
    expected = torch.nn.functional.cross_entropy(logits, y[0, :-4])
    assert torch.allclose(masked, expected, atol=1e-5)


def test_lora_merge_and_save_loads_in_plain_transformers_with_equal_logits(model_dir, texts, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, tok = build_module(HFSettings(model=str(model_dir), task="causal_lm", mode="lora", lora_r=4))
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero; move it so the merge changes the weights
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    module.eval()
    x = _ids(tok, texts[:4])
    with torch.no_grad():
        trained, _ = module(x)
    saved = save_for_transformers(module, tok, tmp_path / "hf", merge=True)
    assert set(saved) == {"adapter", "merged"}
    merged = AutoModelForCausalLM.from_pretrained(saved["merged"]).eval()
    base = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        mask = x.ne(PAD).long()
        ids = x.masked_fill(x.eq(PAD), tok.pad_token_id)
        merged_logits = merged(input_ids=ids, attention_mask=mask).logits
        base_logits = base(input_ids=ids, attention_mask=mask).logits
        adapter = PeftModel.from_pretrained(base, saved["adapter"]).eval()
        adapter_logits = adapter(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(merged_logits[real], trained[real], atol=1e-4)
    assert torch.allclose(adapter_logits[real], trained[real], atol=1e-4)
    assert not torch.allclose(base_logits[real], trained[real], atol=1e-3)  # the adapters mattered


def test_trainable_state_round_trip_and_mismatch(model_dir):
    settings = HFSettings(model=str(model_dir), task="causal_lm", mode="lora", lora_r=4)
    a, _ = build_module(settings)
    b, _ = build_module(settings)
    state = a.trainable_state()
    assert state and all("lora_" in k for k in state)
    with torch.no_grad():
        for n, p in a.named_parameters():
            if "lora_B" in n:
                p.fill_(0.25)
    b.load_trainable_state(a.trainable_state())
    for k, v in b.trainable_state().items():
        np.testing.assert_array_equal(v, a.trainable_state()[k])
    with pytest.raises(ValueError, match="missing"):
        b.load_trainable_state({})
