"""`envkit train`: prepare | pretrain | finetune | test | cycle | keys | presets | sbatch.

envkit/cli.py mounts this `app` lazily (`envkit doctor` never imports training).

Thin commands: resolve the config (preset <- file <- key=value), call a stage
function that returns data, render it as Rich tables or `--json`. Errors follow
the shared policy of `envkit.cli_support` (2 = bad input, one `error:` line;
1 = the run failed, e.g. diverged; 130 = interrupted). torch and tensorflow load
only inside a command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from envkit.cli_support import CheckFailed, ExitCode, UsageError, console, emit, make_app, print_error

app = make_app(help="Train, fine-tune and test a small GPT: prepare | pretrain | finetune | test | cycle.")

OVERRIDES = typer.Argument(
    None, help="key=value overrides, e.g. max_steps=100 model.n_layer=4 engine=pytorch (`envkit train keys`)"
)
CONFIG = typer.Option(None, "--config", "-c", help="YAML/JSON config file")
PRESET = typer.Option(None, "--preset", "-p", help="bundled preset: tiny, small, gpt2-124m")
JSON_OUT = typer.Option(False, "--json", help="print the result as JSON")
VERBOSE = typer.Option(False, "--verbose", help="show TensorFlow's C++ log (also ENVKIT_TF_VERBOSE=1)")


def _verbose(flag: bool) -> None:
    if flag:
        from training.engines.tf_quiet import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"


def _config(preset: str | None, config: Path | None, overrides: list[str] | None):
    """Resolve the config; without --preset/--config, start from an existing run's config.json."""
    from training.core.config import apply_mapping, load_run_config, parse_overrides, resolve_config

    cfg = resolve_config(preset, config, overrides or [])
    saved = Path(cfg.runtime.run_dir) / "config.json"
    if not preset and not config and saved.is_file():
        cfg = load_run_config(saved)
        apply_mapping(cfg, parse_overrides(overrides or []), source="the command line")
        cfg.validate_run()
    if cfg.runtime.engine == "auto":
        from training.engines import resolve_engine_name

        cfg.runtime.engine = resolve_engine_name("auto")
    return cfg


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn`, turning user-caused errors into UsageError and a diverged run into CheckFailed."""
    from training.core.checkpoint import CheckpointError
    from training.core.config import ConfigError
    from training.core.readers import DataError
    from training.core.stage import ResumeError, TrainingDiverged
    from training.engines.base import EngineError

    try:
        return fn(*args)
    except (ConfigError, DataError, EngineError, CheckpointError, ResumeError) as exc:
        raise UsageError(str(exc)) from None
    except TrainingDiverged as exc:
        raise CheckFailed(str(exc)) from None
    except KeyboardInterrupt:
        print_error("interrupted; rerun the same command to resume from the last checkpoint")
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def _is_main() -> bool:
    from training.engines.base import DistInfo

    return DistInfo.from_env().is_main  # torchrun's RANK or TF_CONFIG's worker index


def _emit(data: dict[str, Any], as_json: bool, render: Callable[[Console, dict[str, Any]], None]) -> None:
    if _is_main():
        emit(data, as_json=as_json, render=lambda con: render(con, data))


def _note(message: str) -> None:
    if _is_main():
        console(stderr=True).print(message, soft_wrap=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_prepare(con: Console, data: dict[str, Any]) -> None:
    table = Table(title="prepared data", show_header=False)
    table.add_row("directory", data["prepared_dir"] + (" (reused)" if data.get("reused") else ""))
    table.add_row("tokenizer", f"{data['tokenizer']}, {data['vocab_size']} ids")
    table.add_row("LM tokens", ", ".join(f"{k} {v:,}" for k, v in data["lm_tokens"].items()))
    table.add_row("classes", ", ".join(data["classes"]))
    table.add_row("labelled rows", ", ".join(f"{k} {v:,}" for k, v in data["cls_rows"].items()))
    con.print(table)


def render_stage(con: Console, data: dict[str, Any]) -> None:
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
    con.print(table)


def render_report(con: Console, report: dict[str, Any]) -> None:
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
    con.print(table)


@app.command("prepare")
def prepare_cmd(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    preset: str = PRESET,
    as_json: bool = JSON_OUT,
    verbose: bool = VERBOSE,
) -> None:
    """Read and check the data, train the tokenizer, write prepared shards + meta.json."""
    from training.core.cycle import run_prepare

    _verbose(verbose)
    cfg = _guarded(_config, preset, config, overrides)
    data = _guarded(run_prepare, cfg)
    _emit(data, as_json, render_prepare)


def _stage_cmd(name: str, overrides, config, preset, as_json, verbose) -> None:
    from training.core.cycle import run_stage

    _verbose(verbose)
    cfg = _guarded(_config, preset, config, overrides)
    data = _guarded(run_stage, cfg, name, _note)
    _emit(data, as_json, render_stage)
    if data["status"] == "preempted":
        _note(f"{name} preempted: checkpoint saved; rerun the same command to resume")


@app.command("pretrain")
def pretrain_cmd(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    preset: str = PRESET,
    as_json: bool = JSON_OUT,
    verbose: bool = VERBOSE,
) -> None:
    """Pretrain the causal LM (a fresh run_dir is prepared first; resume=auto continues from `last`)."""
    _stage_cmd("pretrain", overrides, config, preset, as_json, verbose)


@app.command("finetune")
def finetune_cmd(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    preset: str = PRESET,
    as_json: bool = JSON_OUT,
    verbose: bool = VERBOSE,
) -> None:
    """Fine-tune the classifier from the pretrained backbone (init=scratch for the baseline)."""
    _stage_cmd("finetune", overrides, config, preset, as_json, verbose)


@app.command("test")
def test_cmd(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    preset: str = PRESET,
    as_json: bool = JSON_OUT,
    verbose: bool = VERBOSE,
) -> None:
    """Accuracy, precision, recall, F1, confusion matrix on the test split; held-out perplexity."""
    _stage_cmd("test", overrides, config, preset, as_json, verbose)


@app.command("cycle")
def cycle_cmd(
    overrides: list[str] = OVERRIDES,
    config: Path = CONFIG,
    preset: str = PRESET,
    as_json: bool = JSON_OUT,
    verbose: bool = VERBOSE,
) -> None:
    """prepare -> pretrain -> finetune -> test, then the final report."""
    from training.core.cycle import run_cycle

    _verbose(verbose)
    cfg = _guarded(_config, preset, config, overrides)
    report = _guarded(run_cycle, cfg)
    _emit(report, as_json, render_report)
    if report.get("cycle", {}).get("status") == "preempted":
        _note("cycle preempted: checkpoint saved; rerun the same command to resume")


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
        raise UsageError(f"unknown example {name!r}; available: dense")
    from training.examples.dense import main as dense_main

    raise typer.Exit(dense_main(["--steps", str(steps), "--every", str(every)]))


@app.command("keys")
def keys_cmd(as_json: bool = JSON_OUT) -> None:
    """Every config key: its section, old flat name, type, default and meaning."""
    from training.core.config import describe_keys

    rows = describe_keys()

    def render(con: Console) -> None:
        table = Table("key", "flat name", "type", "default", "meaning")
        for r in rows:
            table.add_row(r["key"], r["flat"], r["type"], repr(r["default"]), r["description"])
        con.print(table)

    emit(rows, as_json=as_json, render=render)


@app.command("presets")
def presets_cmd(as_json: bool = JSON_OUT) -> None:
    """List the bundled presets and their model shapes (every key: `envkit train keys`)."""
    from training.core.config import load_preset, preset_names, resolve_config

    data = {name: load_preset(name) for name in preset_names()}

    def render(con: Console) -> None:
        table = Table("preset", "layers", "heads", "width", "context", "vocab", "steps")
        for name in data:
            cfg = _guarded(resolve_config, name)
            m = cfg.model
            table.add_row(
                name,
                *(str(v) for v in (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size)),
                str(cfg.pretrain.max_steps),
            )
        con.print(table)
        con.print("every key with its type, default and meaning: envkit train keys")

    emit(data, as_json=as_json, render=render)


# `envkit train sbatch`: the batch script for N Slurm nodes (training/cluster owns it; typer only)
from training.cluster.cli import sbatch_cmd  # noqa: E402

app.command("sbatch")(sbatch_cmd)


def main() -> None:  # `python -m training` (used under torchrun)
    app(prog_name="envkit train")


if __name__ == "__main__":
    sys.exit(main())
