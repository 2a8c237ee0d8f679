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


def test_sections_and_dotted_keys():
    cfg = resolve_config(
        None, None, ["pretrain.max_steps=40", "finetune.lr=5e-4", "runtime.threads=2", "data.max_len=32"]
    )
    assert (cfg.pretrain.max_steps, cfg.finetune.lr, cfg.runtime.threads, cfg.data.max_len) == (
        40,
        5e-4,
        2,
        32,
    )
    # the old flat names (incl. ft_) set the same fields
    old = resolve_config(None, None, ["max_steps=40", "ft_lr=5e-4", "threads=2", "max_len=32"])
    assert old.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match=r"unknown config key 'pretrain\.epochs'"):
        resolve_config(None, None, ["pretrain.epochs=3"])


def test_a_config_file_in_sections_and_one_in_the_old_flat_layout_agree(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "pretrain:\n  max_steps: 50\nfinetune:\n  epochs: 2\n  init: scratch\nmodel:\n  n_layer: 3\n"
    )
    flat = tmp_path / "flat.yaml"
    flat.write_text("max_steps: 50\nft_epochs: 2\ninit: scratch\nmodel:\n  n_layer: 3\n")
    assert resolve_config(None, nested).to_dict() == resolve_config(None, flat).to_dict()
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: 3\n")
    with pytest.raises(ConfigError, match=r"'pretrain' in config file .* must be a mapping"):
        resolve_config(None, bad)


def test_a_run_config_saved_before_sections_still_loads(tmp_path):
    # config.json as the flat dataclass wrote it (keys verbatim from a run of that code)
    old = {
        "batch_size": 8, "beta1": 0.9, "beta2": 0.95, "checkpoint_every": 4, "classes": [], "compile": False,
        "corpus": "synthetic", "device": "cuda", "distributed": "ddp", "dtype": "float32", "engine": "auto",
        "eval_batches": 2, "eval_every": 2, "ft_batch_size": 16, "ft_epochs": 1, "ft_lr": 0.001,
        "ft_patience": 0, "ft_steps_per_epoch": 3, "ft_warmup_ratio": 0.1, "ft_weight_decay": 0.01,
        "grad_accum": 1, "grad_clip": 1.0, "init": "pretrained", "keep_step_checkpoints": False,
        "label_column": "", "labelled": "synthetic", "labelled_test": "", "log_every": 2, "lr": 0.003,
        "max_len": 32, "max_steps": 4, "min_lr_ratio": 0.1,
        "model": {"bias": True, "block_size": 32, "dropout": 0.1, "n_classes": 2, "n_embd": 32, "n_head": 2,
                  "n_layer": 1, "vocab_size": 300},
        "patience": 0, "prepared_dir": "", "preset": "", "pretrain_on_labelled": False, "progress": "off",
        "resume": "auto", "run_dir": "/tmp/htrain/oldrun", "seed": 1337, "synthetic_docs": 300,
        "synthetic_reviews": 300, "test_fraction": 0.1, "text_column": "", "threads": 1, "tokenizer": "bpe",
        "val_fraction": 0.1, "warmup_steps": 2, "weight_decay": 0.1,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    cfg = load_run_config(path)
    assert cfg.finetune.steps_per_epoch == 3 and cfg.pretrain.max_steps == 4 and cfg.model.n_embd == 32
    # old words are read, the project's words are written
    assert (cfg.runtime.dtype, cfg.runtime.device) == ("fp32", "gpu")
    saved = cfg.to_dict()
    assert saved["format"] == "envkit.train-config/v2" and saved["runtime"]["dtype"] == "fp32"
    save_config(cfg, tmp_path / "again.json")
    assert load_run_config(tmp_path / "again.json").to_dict() == saved


@pytest.mark.parametrize(
    ("given", "dtype"), [("float32", "fp32"), ("fp32", "fp32"), ("bfloat16", "bf16"), ("float16", "fp16")]
)
def test_dtype_aliases_are_read_as_the_matrix_words(given, dtype):
    assert resolve_config(None, None, [f"dtype={given}"]).runtime.dtype == dtype


def test_every_key_is_described_with_type_default_and_meaning():
    from training.core.config import describe_keys

    rows = {r["key"]: r for r in describe_keys()}
    assert rows["pretrain.max_steps"]["type"] == "int" and rows["pretrain.max_steps"]["default"] == 300
    assert (
        rows["finetune.lr"]["flat"] == "ft_lr"
        and rows["runtime.dtype"]["type"] == "auto | fp32 | bf16 | fp16"
    )
    sections = ("model", "data", "pretrain", "finetune", "optim", "runtime", "hf")
    assert all(r["description"] for r in rows.values() if not r["key"].startswith("hf."))
    fields = sum(len(type(getattr(TrainConfig(), s)).model_fields) for s in sections)
    assert len(rows) == fields + 1  # + preset


def test_train_keys_and_bad_values_on_the_command_line():
    from typer.testing import CliRunner

    from envkit.cli import app

    runner = CliRunner()
    keys = runner.invoke(app, ["train", "keys", "--json"])
    assert keys.exit_code == 0, keys.output
    assert {"key": "finetune.epochs", "flat": "ft_epochs"}.items() <= next(
        r for r in json.loads(keys.stdout) if r["key"] == "finetune.epochs"
    ).items()
    table = runner.invoke(app, ["train", "keys"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "pretrain.max_steps" in table.output and "context length" in table.output
    for bad in ("max_steps=ten", "pretrain.nope=1", "dtype=fp64", "device=tpu"):
        result = runner.invoke(app, ["train", "prepare", "run_dir=/nonexistent/x", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, bad
