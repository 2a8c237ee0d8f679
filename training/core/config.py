"""Run configuration: typed sections (pydantic v2), presets, files and `key=value` overrides.

A run's config has seven sections, each a pydantic model whose fields carry their
type, default and meaning (`envkit train keys` prints them all):

    model     the GPT's shape (shared by both engines; docs/training-contract.md)
    data      corpus, labelled set, splits, tokenizer, classification length
    pretrain  causal-LM stage: batch, steps, schedule, evaluation, checkpoints
    finetune  classification stage: init, epochs, batch, schedule, patience
    optim     AdamW betas, gradient clipping, the schedule's floor (both stages)
    runtime   run directory, engine, device, dtype, seed, threads, resume, progress
    hf        fine-tuning a pretrained Hugging Face model (`pretrained=DIR_OR_ID`; training/hf)

Resolution order (later wins): defaults <- preset (`training/presets/NAME.yaml`)
<- config file (YAML or JSON) <- command-line `key=value` overrides. A key is
written dotted (`pretrain.max_steps=100`, `model.n_layer=4`) or, as before the
sections existed, flat (`max_steps=100`, `n_layer=4`, `ft_lr=1e-3`): every flat
key of the old layout maps to exactly one field (`LEGACY_KEYS`), so old presets,
config files and saved run configs still load. An unknown key or a bad value is a
`ConfigError` whose one-line message names the key, its source and the fix.
Nothing here imports a framework.
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from envkit.atomic import atomic_write_text
from envkit.vocab import format_id, normalize_device, normalize_dtype, normalize_framework, parse_format_id
from training.hf.settings import HFSettings  # the `hf` section (issue 16); pydantic only, no framework

CONFIG_FORMAT = format_id("train-config", 2)
SECTIONS = ("model", "data", "pretrain", "finetune", "optim", "runtime", "hf")


class ConfigError(ValueError):
    """A user-caused configuration problem; the message names the key or file."""


# -- lenient readers: command-line values arrive as text, YAML 1.1 reads `off` as false


def _int(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an int")
    if isinstance(value, str):
        value = value.strip()
        try:
            number = float(value)
        except ValueError:
            return value  # pydantic reports it
        return int(number) if number.is_integer() else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    return value


def _text(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"  # YAML 1.1 reads a bare off/no as false
    if isinstance(value, int | float):
        return str(value)
    return value


def _str_list(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return value


def _alias(normalize: Any) -> Any:
    def read(value: Any) -> Any:
        value = _text(value)
        if isinstance(value, str) and value.strip().lower() != "auto":
            try:
                return str(normalize(value))
            except ValueError:
                return value  # pydantic lists the choices
        return value.strip().lower() if isinstance(value, str) else value

    return read


Int = Annotated[int, BeforeValidator(_int)]
Float = Annotated[float, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)]
Bool = Annotated[bool, BeforeValidator(_bool)]
Text = Annotated[str, BeforeValidator(_text)]
TextList = Annotated[list[str], BeforeValidator(_str_list)]


def _choice(*values: str) -> Any:
    return Annotated[Literal[values], BeforeValidator(_text)]  # type: ignore[valid-type]


Engine = Annotated[Literal["auto", "pytorch", "tensorflow"], BeforeValidator(_alias(normalize_framework))]
Device = Annotated[Literal["auto", "cpu", "gpu"], BeforeValidator(_alias(normalize_device))]
DType = Annotated[Literal["auto", "fp32", "bf16", "fp16"], BeforeValidator(_alias(normalize_dtype))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """GPT-style decoder shape (the contract shared by both engines)."""

    vocab_size: Int = Field(512, ge=1, description="token ids (tokenizer=bpe trains this many)")
    block_size: Int = Field(64, ge=1, description="context length in tokens (position embeddings)")
    n_layer: Int = Field(2, ge=1, description="transformer blocks")
    n_head: Int = Field(2, ge=1, description="attention heads per block")
    n_embd: Int = Field(64, ge=1, description="width of the residual stream (a multiple of n_head)")
    dropout: Float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability in training")
    bias: Bool = Field(True, description="biases in Linear and LayerNorm layers")
    n_classes: Int = Field(2, ge=1, description="classifier outputs (set from the prepared data)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class DataConfig(_Section):
    """Where the text and labels come from and how they are split and tokenized."""

    corpus: Text = Field(
        "synthetic", description="LM text: synthetic | file.txt | folder | hf:NAME[:CONFIG]; comma list"
    )
    labelled: Text = Field(
        "synthetic", description="labelled set: synthetic | .tsv/.csv/.jsonl | aclImdb | hf:NAME"
    )
    labelled_test: Text = Field("", description="separate test file for `labelled` (e.g. SST-2 dev.tsv)")
    text_column: Text = Field("", description='text column; "" = first of text, sentence, review, content')
    label_column: Text = Field("", description='label column; "" = first of label, labels, sentiment, target')
    classes: TextList = Field(
        default_factory=list, description="class names in order; [] = sorted labels found"
    )
    pretrain_on_labelled: Bool = Field(False, description="add the labelled train texts to the LM corpus")
    synthetic_docs: Int = Field(2500, ge=1, description="documents of the synthetic corpus")
    synthetic_reviews: Int = Field(3000, ge=1, description="rows of the synthetic labelled set")
    val_fraction: Float = Field(0.1, ge=0.0, lt=1.0, description="validation share carved from train")
    test_fraction: Float = Field(0.1, ge=0.0, lt=1.0, description="test share carved from train")
    tokenizer: _choice("bpe", "byte") = Field(
        "bpe", description="bpe (byte-level BPE of model.vocab_size) | byte (256 bytes)"
    )
    max_len: Int = Field(0, ge=0, description="classification length in tokens; 0 = model.block_size")
    prepared_dir: Text = Field("", description='prepared data directory; "" = run_dir/prepared')


class PretrainConfig(_Section):
    """The causal-LM stage."""

    batch_size: Int = Field(16, ge=1, description="rows per replica per micro-step")
    grad_accum: Int = Field(1, ge=1, description="micro-steps per optimizer step")
    max_steps: Int = Field(300, ge=1, description="optimizer steps")
    lr: Float = Field(3e-3, ge=0.0, description="peak learning rate")
    warmup_steps: Int = Field(30, ge=0, description="linear warm-up steps before the cosine decay")
    weight_decay: Float = Field(0.1, ge=0.0, description="AdamW decay of matmul weights")
    eval_every: Int = Field(100, ge=1, description="steps between validation evaluations")
    eval_batches: Int = Field(8, ge=1, description="validation batches per evaluation")
    log_every: Int = Field(10, ge=1, description="steps between log records (both stages)")
    checkpoint_every: Int = Field(
        100, ge=0, description="steps between `last` checkpoints; 0 = only at the end"
    )
    keep_step_checkpoints: Bool = Field(False, description="also keep step-NNNNNNN checkpoints")
    patience: Int = Field(0, ge=0, description="evaluations without improvement before early stop; 0 = off")


class FinetuneConfig(_Section):
    """The classification stage."""

    init: _choice("pretrained", "scratch") = Field(
        "pretrained", description="start from the pretrained backbone or from random weights"
    )
    epochs: Int = Field(3, ge=0, description="passes over the training split")
    batch_size: Int = Field(32, ge=1, description="rows per replica per step")
    lr: Float = Field(1e-3, ge=0.0, description="peak learning rate")
    weight_decay: Float = Field(0.01, ge=0.0, description="AdamW decay of matmul weights")
    warmup_ratio: Float = Field(0.1, ge=0.0, le=1.0, description="share of steps spent warming up")
    patience: Int = Field(0, ge=0, description="epochs without improvement before early stop; 0 = off")
    steps_per_epoch: Int = Field(0, ge=0, description="cap on batches per epoch; 0 = the whole split")


class OptimConfig(_Section):
    """AdamW and schedule settings both stages share."""

    beta1: Float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    beta2: Float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2")
    grad_clip: Float = Field(1.0, ge=0.0, description="clip the global gradient norm; 0 = off")
    min_lr_ratio: Float = Field(
        0.1, ge=0.0, le=1.0, description="cosine decay floor as a share of the peak lr"
    )


class RuntimeConfig(_Section):
    """Where and how the run executes."""

    run_dir: Text = Field("runs/train", description="run directory: data, checkpoints, metrics, report")
    engine: Engine = Field("auto", description="pytorch | tensorflow | auto (pytorch when importable)")
    seed: Int = Field(1337, description="seed of data order, initialisation and dropout")
    device: Device = Field("auto", description="auto | cpu | gpu (cuda accepted)")
    dtype: DType = Field(
        "auto",
        description="auto (bf16 on compute capability >= 8.0, fp16 below, fp32 on CPU) | fp32 | bf16 | fp16",
    )
    compile: Bool = Field(False, description="torch.compile the model (TensorFlow: force XLA)")
    threads: Int = Field(0, ge=0, description="intra-op CPU threads; 0 = the framework's default")
    distributed: _choice("ddp", "fsdp") = Field(
        "ddp", description="torchrun wrapping: ddp | fsdp (FSDP2 per block)"
    )
    resume: _choice("auto", "never") = Field("auto", description="auto: continue from checkpoints | never")
    progress: _choice("auto", "bar", "plain", "off") = Field(
        "auto", description="auto (bar on a TTY) | bar | plain | off"
    )


# Every flat key of the layout before sections (presets, config files, saved configs).
LEGACY_KEYS: dict[str, str] = {
    **{k: f"model.{k}" for k in ModelConfig.model_fields},
    **{k: f"data.{k}" for k in DataConfig.model_fields},
    **{k: f"pretrain.{k}" for k in PretrainConfig.model_fields},
    **{k: f"optim.{k}" for k in OptimConfig.model_fields},
    **{k: f"runtime.{k}" for k in RuntimeConfig.model_fields},
    "init": "finetune.init",
    **{f"ft_{k}": f"finetune.{k}" for k in FinetuneConfig.model_fields if k != "init"},
    "pretrained": "hf.model",  # a Hugging Face model directory or hub id to fine-tune (training/hf)
}


class TrainConfig(BaseModel):
    """One run: six sections and the preset it started from."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: Text = Field("", description="bundled preset the run started from (training/presets/NAME.yaml)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    hf: HFSettings = Field(default_factory=HFSettings)

    @model_validator(mode="before")
    @classmethod
    def _sections_from_flat(cls, data: Any) -> Any:
        """TrainConfig(threads=1, ft_lr=...) as before sections: flat keys move into theirs."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECTIONS or key not in LEGACY_KEYS:
                out[key] = value
                continue
            section, name = LEGACY_KEYS[key].split(".")
            block = out.setdefault(section, {})
            if isinstance(block, BaseModel):
                block = out[section] = block.model_dump()
            block[name] = value
        return out

    def __getattr__(self, name: str) -> Any:
        # read-only compatibility for code written against the flat layout (cfg.max_steps)
        target = LEGACY_KEYS.get(name)
        if target is not None:
            section, key = target.split(".")
            return getattr(getattr(self, section), key)
        return super().__getattr__(name)  # type: ignore[misc]

    def validate_run(self) -> None:
        """Checks across fields, before anything is written."""
        m, d = self.model, self.data
        if m.n_embd % m.n_head:
            raise ConfigError(
                f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}; "
                "pick n_embd as a multiple of n_head"
            )
        if d.val_fraction + d.test_fraction >= 0.9:
            raise ConfigError("val_fraction and test_fraction leave under 10% to train; lower them")
        if d.max_len > m.block_size:
            raise ConfigError(
                f"max_len={d.max_len} is longer than the model's context "
                f"model.block_size={m.block_size}; lower max_len or raise block_size"
            )
        if d.tokenizer == "byte" and m.vocab_size < 258:
            raise ConfigError("tokenizer=byte needs model.vocab_size >= 258 (256 bytes + 2 specials)")

    validate = validate_run  # the name callers used before pydantic

    @property
    def seq_len(self) -> int:
        """Length of classification sequences."""
        return self.data.max_len or self.model.block_size

    def prepared_path(self) -> Path:
        d = self.data.prepared_dir
        return Path(d) if d else Path(self.runtime.run_dir) / "prepared"

    def get_key(self, key: str) -> Any:
        """The value of a flat or dotted key (`ft_lr`, `finetune.lr`)."""
        section, name = _resolve_key(key, "a lookup")
        return getattr(getattr(self, section), name) if section else getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **self.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "dict") -> TrainConfig:
        cfg = cls()
        apply_mapping(cfg, data, source=source)
        return cfg


# ---------------------------------------------------------------------------
# keys


def all_keys() -> list[str]:
    """Every dotted key, in section order."""
    out = ["preset"]
    for section in SECTIONS:
        out += [f"{section}.{k}" for k in TrainConfig.model_fields[section].annotation.model_fields]
    return out


def _type_name(annotation: Any) -> str:
    args = get_args(annotation)
    base = args[0] if get_origin(annotation) is Annotated else annotation
    if get_origin(base) is Literal:
        return " | ".join(get_args(base))
    if get_origin(base) is list:
        return "list[str]"
    return getattr(base, "__name__", str(base))


def describe_keys() -> list[dict[str, Any]]:
    """key, flat (old) name, type, default and meaning of every config key."""
    flat = {v: k for k, v in LEGACY_KEYS.items()}
    rows = []
    defaults = TrainConfig().model_dump(mode="json")
    for key in all_keys():
        if "." in key:
            section, name = key.split(".")
            info = TrainConfig.model_fields[section].annotation.model_fields[name]
            default = defaults[section][name]
        else:
            info, default = TrainConfig.model_fields[key], defaults[key]
        rows.append(
            {
                "key": key,
                "flat": flat.get(key, ""),
                "type": _type_name(info.annotation),
                "default": default,
                "description": info.description or "",
            }
        )
    return rows


def _resolve_key(key: str, source: str) -> tuple[str, str]:
    """'pretrain.lr' / 'lr' / 'ft_lr' -> (section, field); ('', 'preset') for the top level."""
    if key == "preset":
        return "", "preset"
    if "." in key:
        section, _, name = key.partition(".")
        model = TrainConfig.model_fields.get(section)
        if section in SECTIONS and model is not None and name in model.annotation.model_fields:
            return section, name
    elif key in LEGACY_KEYS:
        section, name = LEGACY_KEYS[key].split(".")
        return section, name
    close = difflib.get_close_matches(key, [*LEGACY_KEYS, *all_keys()], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else "; `envkit train keys` lists them"
    raise ConfigError(f"unknown config key {key!r} in {source}{hint}")


def _error_text(key: str, value: Any, exc: ValidationError) -> str:
    err = exc.errors()[0]
    kind = err.get("type", "")
    if kind.startswith("int_"):
        return f"{key}={value!r} is not a valid int"
    if kind.startswith("float_"):
        return f"{key}={value!r} is not a valid float"
    if kind.startswith("bool_"):
        return f"{key}={value!r} is not a valid bool (use true or false)"
    if kind == "literal_error":
        choices = err.get("ctx", {}).get("expected", "")
        return f"{key}={value!r} is not one of {choices.replace(chr(39), '')}"
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        return f"{key}={value!r}: {err['msg'].lower()}"
    return f"{key}={value!r}: {err['msg']}"


def set_key(cfg: TrainConfig, key: str, value: Any, source: str) -> None:
    """Set one flat or dotted key on `cfg`, validated; a ConfigError names key and source."""
    section, name = _resolve_key(key, source)
    target = getattr(cfg, section) if section else cfg
    try:
        setattr(target, name, value)
    except ValidationError as exc:
        where = "" if source == "the command line" else f" (in {source})"
        raise ConfigError(_error_text(key, value, exc) + where) from None


def _is_new_layout(data: dict[str, Any]) -> bool:
    fmt = data.get("format")
    if fmt is None:
        return False
    try:
        kind, _ = parse_format_id(str(fmt))
    except ValueError:
        return False
    return kind == "train-config"


def apply_mapping(cfg: TrainConfig, data: dict[str, Any], source: str) -> None:
    """Set every key of `data` on `cfg`: sections as nested mappings, or flat/dotted keys."""
    for key, value in data.items():
        key = str(key)
        if key == "format" and _is_new_layout(data):
            continue
        if key in SECTIONS and isinstance(value, dict):
            for sub, val in value.items():
                set_key(cfg, f"{key}.{sub}", val, source)
        elif key in SECTIONS:
            raise ConfigError(f"'{key}' in {source} must be a mapping of {key} keys")
        else:
            set_key(cfg, key, value, source)


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


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['n_layer=4', 'lr=1e-3'] -> {'n_layer': '4', 'lr': '1e-3'} (each field's type reads the text)."""
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
    if file_data:
        apply_mapping(cfg, file_data, source=f"config file {config_file}")
    apply_mapping(cfg, over, source="the command line")
    if name:
        cfg.preset = str(name)
    cfg.validate_run()
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as JSON (atomically)."""
    atomic_write_text(Path(path), json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_run_config(path: str | Path) -> TrainConfig:
    """Read a run directory's config.json (either layout) back into a TrainConfig."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{p} is not a readable run config ({exc}); remove it or use a new run_dir"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a JSON object")
    return TrainConfig.from_dict(data, source=str(p))
