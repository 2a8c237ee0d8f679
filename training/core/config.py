"""Run configuration: two dataclasses, presets, and `key=value` overrides.

Resolution order (later wins): dataclass defaults <- preset (`training/presets/NAME.yaml`)
<- config file (YAML or JSON) <- command-line `key=value` overrides. Model keys may be
written flat (`n_layer=4`) or dotted (`model.n_layer=4`); an unknown key is an error
that names it. Nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user-caused configuration problem; the message names the key or file."""


@dataclass
class ModelConfig:
    """GPT-style decoder shape (the contract shared by both engines)."""

    vocab_size: int = 512
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = True
    n_classes: int = 2

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")


@dataclass
class TrainConfig:
    """Everything about one run except the model shape (which lives in `model`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preset: str = ""
    run_dir: str = "runs/train"
    engine: str = "auto"  # pytorch | tensorflow | auto (pytorch when importable)
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on a bf16 GPU, else float32) | float32 | bf16 | fp16
    compile: bool = False
    threads: int = 0  # intra-op CPU threads; 0 = the framework's default
    distributed: str = "ddp"  # ddp | fsdp (torchrun only; FSDP2 `fully_shard` per block)

    # -- data --------------------------------------------------------------
    corpus: str = "synthetic"  # synthetic | file.txt | folder | hf:NAME[:CONFIG]; comma-separated list
    labelled: str = "synthetic"  # synthetic | file.tsv/.csv/.jsonl | aclImdb folder | hf:NAME
    labelled_test: str = ""  # optional separate test file for `labelled` (e.g. SST-2 dev.tsv)
    text_column: str = ""  # "" = first of text, sentence, review, content
    label_column: str = ""  # "" = first of label, labels, sentiment, target
    classes: list[str] = field(default_factory=list)  # [] = sorted labels found in the data
    pretrain_on_labelled: bool = False  # add the labelled train texts to the LM corpus
    synthetic_docs: int = 2500
    synthetic_reviews: int = 3000
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    tokenizer: str = "bpe"  # bpe (byte-level BPE of model.vocab_size) | byte (256 bytes)
    max_len: int = 0  # classification length; 0 = model.block_size
    prepared_dir: str = ""  # "" = run_dir/prepared

    # -- pretraining (causal LM) --------------------------------------------
    batch_size: int = 16  # per rank, per micro-step
    grad_accum: int = 1
    max_steps: int = 300
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 100
    keep_step_checkpoints: bool = False
    patience: int = 0  # evaluations without improvement before early stop; 0 = off

    # -- fine-tuning (classification) ---------------------------------------
    init: str = "pretrained"  # pretrained | scratch
    ft_epochs: int = 3
    ft_batch_size: int = 32
    ft_lr: float = 1e-3
    ft_weight_decay: float = 0.01
    ft_warmup_ratio: float = 0.1
    ft_patience: int = 0  # epochs without improvement before early stop; 0 = off
    ft_steps_per_epoch: int = 0  # cap on batches per epoch (a budget on big sets); 0 = the whole split

    # -- reliability ----------------------------------------------------------
    resume: str = "auto"  # auto | never
    progress: str = "auto"  # auto (bar on a TTY) | bar | plain | off

    def validate(self) -> None:
        """Check values a run needs before anything is written."""
        self.model.validate()
        choices = {
            "engine": ("auto", "pytorch", "tensorflow"),
            "device": ("auto", "cpu", "cuda"),
            "dtype": ("auto", "float32", "bf16", "fp16"),
            "distributed": ("ddp", "fsdp"),
            "tokenizer": ("bpe", "byte"),
            "init": ("pretrained", "scratch"),
            "resume": ("auto", "never"),
            "progress": ("auto", "bar", "plain", "off"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        positive = ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_every", "ft_batch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.ft_steps_per_epoch < 0:
            raise ConfigError(f"ft_steps_per_epoch={self.ft_steps_per_epoch} must be >= 0 (0 = no cap)")
        if self.ft_epochs < 0:
            raise ConfigError(f"ft_epochs={self.ft_epochs} must be >= 0")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ConfigError("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("val_fraction + test_fraction leaves under 10% to train; lower them")
        if self.max_len > self.model.block_size:
            raise ConfigError(
                f"max_len={self.max_len} is longer than the model's context "
                f"model.block_size={self.model.block_size}; lower max_len or raise block_size"
            )
        if self.tokenizer == "byte" and self.model.vocab_size < 258:
            raise ConfigError("tokenizer=byte needs model.vocab_size >= 258 (256 bytes + 2 specials)")

    @property
    def seq_len(self) -> int:
        """Length of classification sequences."""
        return self.max_len or self.model.block_size

    def prepared_path(self) -> Path:
        return Path(self.prepared_dir) if self.prepared_dir else Path(self.run_dir) / "prepared"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        cfg = cls()
        apply_mapping(cfg, data, source="dict")
        return cfg


# ---------------------------------------------------------------------------
# presets, files and overrides


def preset_names() -> list[str]:
    """Names of the bundled presets (training/presets/*.yaml)."""
    folder = resources.files("training") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """The mapping of one bundled preset."""
    path = resources.files("training") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name!r} is not a mapping")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML/JSON file to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of key: value")
    return data


def _known_keys() -> list[str]:
    train = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    model = [f.name for f in dataclasses.fields(ModelConfig)]
    return train + model + [f"model.{m}" for m in model]


def _coerce(key: str, value: Any, current: Any, ftype: Any) -> Any:
    """Convert `value` to the type of the field it sets."""
    kind = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    try:
        if kind == "bool" or isinstance(current, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int" or isinstance(current, int):
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or (isinstance(number, float) and not number.is_integer()):
                raise ValueError(value)
            return int(number)
        if kind == "float" or isinstance(current, float):
            return float(value)
        if isinstance(current, list) or str(kind).startswith("list"):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if value is None:
            return ""
        if isinstance(value, bool):
            return "on" if value else "off"  # YAML 1.1 reads a bare off/no as false
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a valid {type(current).__name__}") from None


def _set(cfg: TrainConfig, key: str, value: Any, source: str) -> None:
    model_fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    name = key[len("model.") :] if key.startswith("model.") else key
    if name in model_fields:
        target, fdef = cfg.model, model_fields[name]
    elif name in train_fields and not key.startswith("model."):
        target, fdef = cfg, train_fields[name]
    else:
        close = difflib.get_close_matches(key, _known_keys(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
    setattr(target, name, _coerce(key, value, getattr(target, name), fdef.type))


def apply_mapping(cfg: TrainConfig, data: dict[str, Any], source: str) -> None:
    """Set every key of `data` (flat or with a nested `model:` mapping) on `cfg`."""
    for key, value in data.items():
        if key == "model":
            if not isinstance(value, dict):
                raise ConfigError(f"'model' in {source} must be a mapping of model keys")
            for mkey, mval in value.items():
                _set(cfg, f"model.{mkey}", mval, source)
        else:
            _set(cfg, str(key), value, source)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['n_layer=4', 'lr=1e-3'] -> {'n_layer': 4, 'lr': 0.001} (values read as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (for example: max_steps=100)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        # keep the text: each field's type decides how it is read (so progress=off stays "off")
        out[key] = raw.strip()
    return out


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- preset <- file <- overrides, then validated."""
    cfg = TrainConfig()
    file_data = load_config_file(config_file) if config_file else {}
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    name = preset or over.get("preset") or file_data.get("preset") or ""
    if name:
        apply_mapping(cfg, load_preset(str(name)), source=f"preset {name}")
        cfg.preset = str(name)
    if file_data:
        apply_mapping(cfg, file_data, source=f"config file {config_file}")
    apply_mapping(cfg, over, source="the command line")
    if name:
        cfg.preset = str(name)
    cfg.validate()
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically)."""
    from training.core.checkpoint import atomic_write_text

    atomic_write_text(Path(path), json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_run_config(path: str | Path) -> TrainConfig:
    """Read a run directory's config.json back into a TrainConfig."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return TrainConfig.from_dict(data)
