"""Where a pretrained model comes from, the `hf` settings, and what the pretrained path refuses."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from training.core.config import ConfigError
from training.hf.settings import DEFAULT_LR, HFSettings
from training.hf.source import PretrainedNotFound, hub_offline, resolve_source


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return d


def test_a_local_directory_with_config_json_is_used_as_is(model_dir):
    src = resolve_source(str(model_dir))
    assert src.location == str(model_dir.resolve())
    assert src.local_files_only and src.is_local_dir


def test_a_directory_without_config_json_names_what_is_missing(tmp_path):
    with pytest.raises(PretrainedNotFound, match=r"no config\.json"):
        resolve_source(str(tmp_path))


def test_a_file_is_refused(model_dir):
    with pytest.raises(PretrainedNotFound, match="is a file"):
        resolve_source(str(model_dir / "config.json"))


def test_a_missing_path_says_how_to_get_the_model(tmp_path):
    with pytest.raises(PretrainedNotFound, match=r"no such directory.*hf download") as info:
        resolve_source(str(tmp_path / "nowhere"))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # the CLI's user errors: exit 2


def test_a_hub_id_offline_and_not_cached_is_one_line_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))  # an empty cache
    with pytest.raises(PretrainedNotFound) as info:
        resolve_source("envkit-test/no-such-model")
    text = str(info.value)
    assert "not in the Hugging Face cache" in text
    assert "hf download envkit-test/no-such-model --local-dir DIR" in text
    assert "HF_HUB_OFFLINE=0" in text


def test_offline_is_the_default_and_an_explicit_zero_turns_it_off(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()
    # online, a hub id is passed on to transformers, which may download it
    src = resolve_source("owner/name")
    assert src.location == "owner/name" and not src.local_files_only


def test_empty_and_malformed_specs_are_refused():
    with pytest.raises(PretrainedNotFound, match="empty"):
        resolve_source("  ")
    with pytest.raises(PretrainedNotFound, match="no such directory"):
        resolve_source("a/b/c")


def test_settings_defaults_and_derived_values():
    s = HFSettings()
    assert not s.enabled
    assert s.resolved_task == "classification"
    assert s.learning_rate == DEFAULT_LR["full"]
    lora = HFSettings(model="m", mode="lora", lora_targets="q_proj, v_proj")
    assert lora.enabled and lora.learning_rate == DEFAULT_LR["lora"]
    assert lora.lora_targets == ["q_proj", "v_proj"]
    assert HFSettings(lr=3e-4).learning_rate == 3e-4
    assert HFSettings().use_grad_checkpointing("cuda") and not HFSettings().use_grad_checkpointing("cpu")
    assert HFSettings(grad_checkpointing="on").use_grad_checkpointing("cpu")


@pytest.mark.parametrize(
    "bad", [{"mode": "qlora"}, {"lora_r": 0}, {"lora_dropout": 1.0}, {"max_len": 2}, {"nonsense": 1}]
)
def test_settings_refuse_bad_values(bad):
    with pytest.raises(ValidationError):
        HFSettings(**bad)
