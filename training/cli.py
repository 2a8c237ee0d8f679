"""`envkit train`: prepare | pretrain | finetune | test | cycle (mounted by envkit/cli.py).

Thin commands: resolve the config (preset <- file <- key=value), call a stage
function that returns data, render it as Rich tables or `--json`. User errors
exit 2 with one line; torch and tensorflow load only inside a command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Train, fine-tune and test a small GPT: prepare | pretrain | finetune | test | cycle.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. max_steps=100 n_layer=4 engine=pytorch")
CONFIG = typer.Option(None, "--config", "-c", help="YAML/JSON config file")
PRESET = typer.Option(None, "--preset", "-p", help="bundled preset: tiny, small, gpt2-124m")
JSON_OUT = typer.Option(False, "--json", help="print the result as JSON")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _config(preset: str | None, config: Path | None, overrides: list[str] | None):
    """Resolve the config; without --preset/--config, start from an existing run's config.json."""
    from training.core.config import apply_mapping, load_run_config, parse_overrides, resolve_config

    cfg = resolve_config(preset, config, overrides or [])
    saved = Path(cfg.run_dir) / "config.json"
    if not preset and not config and saved.is_file():
        cfg = load_run_config(saved)
        apply_mapping(cfg, parse_overrides(overrides or []), source="the command line")
        cfg.validate()
    if cfg.engine == "auto":
        from training.engines import resolve_engine_name

        cfg.engine = resolve_engine_name("auto")
    return cfg


def _guarded(fn, *args: Any) -> Any:
    """Run a stage, turning user-caused errors into one line and an exit status."""
    from training.core.checkpoint import CheckpointError
    from training.core.config import ConfigError
    from training.core.readers import DataError
    from training.engines.base import EngineError

    user_errors: tuple[type[BaseException], ...] = (ConfigError, DataError, EngineError, CheckpointError)
    try:
        from training.core.loop import ResumeError, TrainingDiverged

        user_errors += (ResumeError,)
        return fn(*args)
    except user_errors as exc:
        _fail(str(exc), 2)
    except TrainingDiverged as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    return None


def _is_main() -> bool:
    from training.engines.base import DistInfo

    return DistInfo.from_env().is_main  # torchrun's RANK or TF_CONFIG's worker index


def _emit(data: dict[str, Any], as_json: bool, render) -> None:
    if not _is_main():
        return
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_prepare(data: dict[str, Any]) -> None:
    table = Table(title="prepared data", show_header=False)
    table.add_row("directory", data["prepared_dir"] + (" (reused)" if data.get("reused") else ""))
    table.add_row("tokenizer", f"{data['tokenizer']}, {data['vocab_size']} ids")
    table.add_row("LM tokens", ", ".join(f"{k} {v:,}" for k, v in data["lm_tokens"].items()))
    table.add_row("classes", ", ".join(data["classes"]))
    table.add_row("labelled rows", ", ".join(f"{k} {v:,}" for k, v in data["cls_rows"].items()))
    console.print(table)


def render_stage(data: dict[str, Any]) -> None:
    table = Table(title=f"{data['stage']}: {data['status']}", show_header=False)
    for key, value in data.get("metrics", {}).items():
        if key in ("history", "device", "classification", "lm"):
            continue
        table.add_row(key, _fmt(value))
    for key in ("classification", "lm"):
        block = data.get("metrics", {}).get(key)
        if block:
            for k, v in block.items():
                if k not in ("per_class",):
                    table.add_row(f"{key}.{k}", _fmt(v))
    if data.get("checkpoint"):
        table.add_row("checkpoint", data["checkpoint"])
    console.print(table)


def render_report(report: dict[str, Any]) -> None:
    s = report.get("summary", {})
    table = Table(
        title=f"training report ({report.get('cycle', {}).get('status', 'partial')})", show_header=False
    )
    pre = report.get("pretrain", {})
    dev = pre.get("metrics", {}).get("device", {})
    rows = [
        ("engine / device", f"{s.get('engine')} / {dev.get('name', '?')} ({dev.get('dtype', '?')})"),
        ("parameters (no wpe)", f"{s.get('params', 0):,}" if s.get("params") else "n/a"),
        ("pretrain steps", _fmt(s.get("pretrain_steps"))),
        ("best val loss / ppl", f"{_fmt(s.get('best_val_loss'))} / {_fmt(s.get('val_ppl'))}"),
        ("tokens/s, MFU", f"{_fmt(s.get('tokens_per_s'))}, {_fmt(s.get('mfu'))}"),
        ("fine-tune init", _fmt(s.get("init"))),
        ("best val accuracy / F1", f"{_fmt(s.get('best_val_accuracy'))} / {_fmt(s.get('best_val_f1'))}"),
        ("test accuracy", _fmt(s.get("test_accuracy"))),
        (
            "test precision / recall / F1",
            f"{_fmt(s.get('test_precision'))} / {_fmt(s.get('test_recall'))} / {_fmt(s.get('test_f1'))}",
        ),
        ("test perplexity", _fmt(s.get("test_ppl"))),
    ]
    for k, v in rows:
        table.add_row(k, v)
    if s.get("confusion"):
        classes = s.get("classes", [])
        conf = "; ".join(f"{c}: {row}" for c, row in zip(classes, s["confusion"], strict=False))
        table.add_row("confusion (rows = true)", conf)
    if "cycle" in report:
        table.add_row("wall time", f"{report['cycle']['seconds']} s")
    table.add_row("plots", ", ".join(s.get("plots", [])) or "n/a")
    console.print(table)


@app.command("prepare")
def prepare_cmd(
    overrides: list[str] = OVERRIDES, config: Path = CONFIG, preset: str = PRESET, as_json: bool = JSON_OUT
) -> None:
    """Read and check the data, train the tokenizer, write prepared shards + meta.json."""
    from training.core.cycle import run_prepare

    cfg = _guarded(_config, preset, config, overrides)
    data = _guarded(run_prepare, cfg)
    _emit(data, as_json, render_prepare)


def _stage_cmd(name: str, overrides, config, preset, as_json) -> None:
    from training.core.cycle import run_stage

    cfg = _guarded(_config, preset, config, overrides)
    data = _guarded(run_stage, cfg, name)
    _emit(data, as_json, render_stage)
    if data["status"] == "preempted" and _is_main():
        err.print(f"{name} preempted: checkpoint saved; rerun the same command to resume")


@app.command("pretrain")
def pretrain_cmd(
    overrides: list[str] = OVERRIDES, config: Path = CONFIG, preset: str = PRESET, as_json: bool = JSON_OUT
) -> None:
    """Pretrain the causal LM (resume=auto continues from checkpoints/last)."""
    _stage_cmd("pretrain", overrides, config, preset, as_json)


@app.command("finetune")
def finetune_cmd(
    overrides: list[str] = OVERRIDES, config: Path = CONFIG, preset: str = PRESET, as_json: bool = JSON_OUT
) -> None:
    """Fine-tune the classifier from the pretrained backbone (init=scratch for the baseline)."""
    _stage_cmd("finetune", overrides, config, preset, as_json)


@app.command("test")
def test_cmd(
    overrides: list[str] = OVERRIDES, config: Path = CONFIG, preset: str = PRESET, as_json: bool = JSON_OUT
) -> None:
    """Accuracy, precision, recall, F1, confusion matrix on the test split; held-out perplexity."""
    _stage_cmd("test", overrides, config, preset, as_json)


@app.command("cycle")
def cycle_cmd(
    overrides: list[str] = OVERRIDES, config: Path = CONFIG, preset: str = PRESET, as_json: bool = JSON_OUT
) -> None:
    """prepare -> pretrain -> finetune -> test, then the final report."""
    from training.core.cycle import run_cycle

    cfg = _guarded(_config, preset, config, overrides)
    report = _guarded(run_cycle, cfg)
    _emit(report, as_json, render_report)
    if report.get("cycle", {}).get("status") == "preempted" and _is_main():
        err.print("cycle preempted: checkpoint saved; rerun the same command to resume")


@app.command("example")
def example_cmd(
    name: str = typer.Argument(
        ..., help="Which example: dense (Y = relu(WX + b) trained by Adam, TensorFlow 2)."
    ),
    steps: int = typer.Option(300, min=1, help="Training steps."),
    every: int = typer.Option(25, min=1, help="Print the loss every N steps."),
) -> None:
    """Small, correct framework examples (dense: the classic first TensorFlow network, in TF2)."""
    if name != "dense":
        _fail(f"unknown example {name!r}; available: dense")
    from training.examples.dense import main as dense_main

    raise typer.Exit(dense_main(["--steps", str(steps), "--every", str(every)]))


@app.command("presets")
def presets_cmd(as_json: bool = JSON_OUT) -> None:
    """List the bundled presets and their model shapes."""
    from training.core.config import load_preset, preset_names

    data = {name: load_preset(name) for name in preset_names()}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table("preset", "layers", "heads", "width", "context", "vocab", "steps")
    for name, p in data.items():
        m = p.get("model", {})
        table.add_row(
            name,
            *(str(m.get(k, "")) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")),
            str(p.get("max_steps", "")),
        )
    console.print(table)


def main() -> None:  # `python -m training` (used under torchrun)
    app(prog_name="envkit train")


if __name__ == "__main__":
    sys.exit(main())
