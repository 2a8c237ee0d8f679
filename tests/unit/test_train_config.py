"""Config resolution: presets, files, key=value overrides, unknown keys (framework-free)."""

from __future__ import annotations

import json
import sys

import pytest

from training.core.config import ConfigError, TrainConfig, load_run_config, resolve_config, save_config


def test_precedence_preset_then_file_then_overrides(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("max_steps: 77\nmodel:\n  n_layer: 3\nlr: 0.01\n")
    cfg = resolve_config("tiny", cfg_file, ["lr=2e-4", "model.n_embd=96", "n_head=3", "compile=true"])
    assert cfg.preset == "tiny"
    assert cfg.max_steps == 77  # file beats preset (tiny has 300)
    assert cfg.model.n_layer == 3
    assert cfg.lr == pytest.approx(2e-4)  # command line beats file
    assert (cfg.model.n_embd, cfg.model.n_head) == (96, 3)
    assert cfg.compile is True
    assert cfg.model.block_size == 64  # untouched preset value


def test_unknown_key_is_an_error_that_names_it():
    with pytest.raises(ConfigError, match=r"unknown config key 'n_layerz'.*did you mean 'n_layer'"):
        resolve_config("tiny", None, ["n_layerz=3"])
    with pytest.raises(ConfigError, match=r"'model\.seed'"):
        resolve_config(None, None, ["model.seed=1"])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"'learning_rate' in config file .*bad.yaml"):
        resolve_config(None, bad, [])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_steps=ten", "max_steps='ten' is not a valid int"),
        ("lr=fast", "not a valid float"),
        ("n_embd=65", "not divisible by model.n_head"),
        ("max_len=500", "longer than the model's context"),
        ("engine=jax", "engine='jax' is not one of"),
        ("max_steps", "is not key=value"),
    ],
)
def test_bad_values_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config("tiny", None, [override])


def test_strings_stay_strings():
    # YAML would read a bare `off` as false and `1e-3` is a float: each field's type decides
    cfg = resolve_config(
        "tiny", None, ["progress=off", "corpus=a.txt,b.txt", "classes=neg,pos", "max_steps=1e3"]
    )
    assert cfg.progress == "off"
    assert cfg.corpus == "a.txt,b.txt"
    assert cfg.classes == ["neg", "pos"]
    assert cfg.max_steps == 1000


def test_presets_resolve_and_round_trip(tmp_path):
    for name in ("tiny", "small", "gpt2-124m"):
        cfg = resolve_config(name)
        save_config(cfg, tmp_path / f"{name}.json")
        again = load_run_config(tmp_path / f"{name}.json")
        assert again.to_dict() == cfg.to_dict()
    assert resolve_config("gpt2-124m").model.n_layer == 12
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'"):
        resolve_config("huge")


def test_defaults_run_without_a_preset():
    cfg = TrainConfig()
    cfg.validate()
    assert json.loads(json.dumps(cfg.to_dict()))["model"]["n_layer"] == cfg.model.n_layer


def test_config_import_is_framework_free():
    import subprocess

    code = (
        "import sys, training.core.config, training.core.data, training.core.loop, training.cli;"
        "print('torch' in sys.modules, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
