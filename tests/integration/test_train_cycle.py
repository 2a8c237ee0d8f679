"""The training cycle end to end: CLI, run directory, resume, preemption, kill -9, bad input.

Models here are micro (1 layer, width 32) so each run takes seconds on a 2-core CPU;
processes are real (`envkit train ...` subprocesses) wherever a signal is involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from envkit.cli import app  # noqa: E402
from training.core import checkpoint as ckpt  # noqa: E402
from training.core import loop  # noqa: E402
from training.core.config import resolve_config  # noqa: E402
from training.core.prepare import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENVKIT = [sys.executable, "-m", "training"]
MICRO = [
    "synthetic_docs=300", "synthetic_reviews=300", "vocab_size=300", "block_size=32", "n_layer=1",
    "n_head=2", "n_embd=32", "batch_size=8", "max_steps=12", "eval_every=6", "eval_batches=2",
    "checkpoint_every=4", "log_every=2", "warmup_steps=2", "max_len=32", "ft_epochs=1",
    "ft_batch_size=16", "threads=1", "progress=plain", "dropout=0.1",
]  # fmt: skip


def _cfg(run_dir: Path, *extra: str):
    return resolve_config(None, None, [f"run_dir={run_dir}", *MICRO, *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared run directory (data only) that tests copy from."""
    run = tmp_path_factory.mktemp("prepared") / "run"
    prepare(_cfg(run))
    return run


def _copy_prepared(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*ENVKIT, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, **kw
    )


@pytest.mark.slow
def test_cli_cycle_writes_the_whole_run_directory(tmp_path):
    run = tmp_path / "run"
    proc = _run(["cycle", f"run_dir={run}", *MICRO])
    assert proc.returncode == 0, proc.stderr
    assert "training report (completed)" in proc.stdout
    # not a TTY: plain log lines with the per-step figures
    assert "pretrain step 2 | loss" in proc.stdout and "tok/s" in proc.stdout and "mfu n/a" in proc.stdout
    for rel in ("config.json", "tokenizer.json", "metrics.jsonl", "report.json", "plots/loss.png",
                "plots/accuracy.png", "prepared/meta.json"):  # fmt: skip
        assert (run / rel).is_file(), rel
    assert list((run / "tb").glob("events.out.tfevents.*"))
    for name in ("last", "best", "finetune-last", "finetune-best"):
        path = run / "checkpoints" / name
        manifest = ckpt.read_manifest(path)  # verifies every sha256
        assert manifest["world_size"] == 1 and manifest["engine"] == "pytorch"
        assert manifest["config"]["model"]["n_embd"] == 32 and "cursor" in manifest
        state = torch.load(path / "optimizer.pt", weights_only=True)
        assert "optimizer" in state and "rng" in state
        from safetensors.torch import load_file

        weights = load_file(path / "model.safetensors")
        assert "wte.weight" in weights and not any(k.startswith(("module.", "_orig_mod.")) for k in weights)
        assert ("cls_head.weight" in weights) == name.startswith("finetune")
    report = json.loads((run / "report.json").read_text())
    test = report["test"]["metrics"]["classification"]
    assert test["n"] == 30 and np.array(test["confusion"]).sum() == 30
    assert 0.0 <= test["accuracy"] <= 1.0 and report["test"]["metrics"]["lm"]["test_ppl"] > 1.0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if r["stage"] == "pretrain" and "loss" in r)
    assert {"loss", "lr", "grad_norm", "step_ms", "tokens_per_s", "mfu", "peak_mem_mb"} <= set(step)
    # a second test run re-reads the run directory's config: --json output for machines
    result = CliRunner().invoke(app, ["train", "test", f"run_dir={run}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["classification"]["n"] == 30


def _pretrain_weights(run: Path) -> dict[str, np.ndarray]:
    return ckpt.load_weights(run / "checkpoints" / "last")


def test_resume_reproduces_the_uninterrupted_run_bit_exactly(prepared, tmp_path):
    full = _copy_prepared(prepared, tmp_path / "full")
    assert loop.pretrain(_cfg(full)).status == "completed"

    part = _copy_prepared(prepared, tmp_path / "part")

    def preempt_at_5(step: int, engine) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop: checkpoint, then stop

    first = loop.pretrain(_cfg(part), on_step=preempt_at_5)
    assert first.status == "preempted" and first.step == 5
    assert ckpt.read_manifest(part / "checkpoints" / "last")["cursor"] == {"step": 5}
    second = loop.pretrain(_cfg(part, "resume=auto"))
    assert second.status == "completed"
    a, b = _pretrain_weights(full), _pretrain_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    sa = torch.load(full / "checkpoints/last/optimizer.pt", weights_only=True)["optimizer"]["state"]
    sb = torch.load(part / "checkpoints/last/optimizer.pt", weights_only=True)["optimizer"]["state"]
    for i in sa:
        assert torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"])
    assert second.metrics["best_val_loss"] == first.metrics.get(
        "best_val_loss", second.metrics["best_val_loss"]
    )


def test_finetune_resume_mid_epoch_is_bit_exact(prepared, tmp_path):
    base = _copy_prepared(prepared, tmp_path / "base")
    loop.pretrain(_cfg(base))
    full = _copy_prepared(base, tmp_path / "full")
    part = _copy_prepared(base, tmp_path / "part")
    loop.finetune(_cfg(full, "ft_epochs=2"))

    def preempt(step: int, engine) -> None:
        if step == 20:  # epoch 2 of 2, mid-epoch
            os.kill(os.getpid(), signal.SIGTERM)

    assert loop.finetune(_cfg(part, "ft_epochs=2"), on_step=preempt).status == "preempted"
    assert ckpt.read_manifest(part / "checkpoints/finetune-last")["cursor"] == {"epoch": 1, "index": 5}
    assert loop.finetune(_cfg(part, "ft_epochs=2")).status == "completed"
    a = ckpt.load_weights(full / "checkpoints/finetune-last")
    b = ckpt.load_weights(part / "checkpoints/finetune-last")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_0(prepared, tmp_path):
    run = _copy_prepared(prepared, tmp_path / "run")
    args = [
        "pretrain",
        f"run_dir={run}",
        *MICRO,
        "max_steps=1000000",
        "checkpoint_every=0",
        "eval_every=1000000",
    ]
    proc = subprocess.Popen(
        [*ENVKIT, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count('"stage": "pretrain"') >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "preempted" in err
    manifest = ckpt.read_manifest(run / "checkpoints" / "last")
    assert manifest["status"] == "preempted" and 4 <= manifest["step"] < 1000000


@pytest.mark.slow
def test_kill_9_never_leaves_a_torn_checkpoint_and_resume_matches(prepared, tmp_path):
    steps = ["max_steps=60", "checkpoint_every=1", "eval_every=30"]
    reference = _copy_prepared(prepared, tmp_path / "reference")
    loop.pretrain(_cfg(reference, *steps))

    run = _copy_prepared(prepared, tmp_path / "run")
    args = ["pretrain", f"run_dir={run}", *MICRO, *steps]
    proc = subprocess.Popen([*ENVKIT, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = run / "checkpoints"
    deadline = time.monotonic() + 120
    # kill while checkpoints are being written every step
    while not (root.is_dir() and any(p.name.startswith("last") for p in root.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    found = ckpt.find_checkpoint(root, "last")
    assert found is not None  # a complete checkpoint (verified by sha256), old or new
    killed_at = ckpt.read_manifest(found)["step"]
    assert 1 <= killed_at < 60
    assert loop.pretrain(_cfg(run, *steps)).status == "completed"
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]  # temp dirs cleaned up
    a, b = _pretrain_weights(reference), _pretrain_weights(run)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    run = _copy_prepared(prepared, tmp_path / "run")
    result = CliRunner().invoke(
        app,
        ["train", "pretrain", f"run_dir={run}", *MICRO, "lr=1e5", "grad_clip=0", "warmup_steps=0",
         "checkpoint_every=1"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "loss became" in result.output and "last good checkpoint" in result.output
    assert "Traceback" not in result.output
    manifest = ckpt.read_manifest(run / "checkpoints" / "last")
    weights = ckpt.load_weights(run / "checkpoints" / "last")
    assert all(np.isfinite(v).all() for v in weights.values())
    assert manifest["step"] >= 1


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "latin1.txt").write_bytes("une critique du caf\xe9\n".encode("latin-1"))
    (tmp / "empty.txt").write_text("\n\n")
    (tmp / "reviews.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\nfine\t1\n")
    (tmp / "odd_label.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\nweird\t7\n")
    return {
        "missing file": (["corpus=" + str(tmp / "nope.txt")], "nope.txt does not exist"),
        "empty corpus": (["corpus=" + str(tmp / "empty.txt")], "empty.txt is empty"),
        "non-UTF-8": (["corpus=" + str(tmp / "latin1.txt")], "latin1.txt is not UTF-8"),
        "missing column": (
            ["labelled=" + str(tmp / "reviews.tsv"), "text_column=review"],
            "no text column 'review'",
        ),
        "label outside classes": (
            ["labelled=" + str(tmp / "odd_label.tsv"), "classes=0,1"],
            "label '7' in ",
        ),
        "context too long": (["max_len=64"], "longer than the model's context"),
        "unknown key": (["n_layerz=2"], "unknown config key 'n_layerz'"),
    }


@pytest.mark.parametrize("command", ["prepare", "cycle"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, command):
    runner = CliRunner()
    for name, (extra, message) in _bad_inputs(tmp_path).items():
        run = tmp_path / f"run-{command}-{name.replace(' ', '_')}"
        result = runner.invoke(app, ["train", command, f"run_dir={run}", *MICRO, *extra])
        assert result.exit_code == 2, (name, result.output)
        assert message in result.output, (name, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, name
        assert not run.exists(), f"{name}: the run directory was created"


def test_pretrain_on_a_fresh_run_dir_prepares_it_first(tmp_path):
    run = tmp_path / "fresh"
    result = CliRunner().invoke(app, ["train", "test", f"run_dir={run}", *MICRO])
    assert result.exit_code == 2 and "run `envkit train prepare`" in result.output, result.output
    assert not run.exists()  # nothing to test: an error, and nothing written

    result = CliRunner().invoke(app, ["train", "pretrain", f"run_dir={run}", *MICRO, "max_steps=2"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "preparing it first" in line]
    assert len(said) == 1 and "has no prepared data" in said[0], result.output
    assert (run / "prepared" / "meta.json").is_file() and (run / "checkpoints" / "last").is_dir()

    # prepared data that no longer fits the config stays an error (one line, exit 2)
    result = CliRunner().invoke(app, ["train", "pretrain", f"run_dir={run}", "block_size=16", "max_len=16"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "longer than the model's context block_size=16" in result.output


def test_a_labelled_file_too_small_to_split_is_refused(tmp_path):
    tiny = tmp_path / "two.tsv"
    tiny.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "prepare", f"run_dir={run}", *MICRO, f"labelled={tiny}"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:"), result.output
    # the counts per split and class, and the fix
    assert "too small to split" in line and "val 0=0, 1=0" in line and "val_fraction" in line, line
    assert not run.exists()
    # the same rows with no val/test split asked for are a (tiny) valid set
    enough = tmp_path / "enough.tsv"
    enough.write_text("sentence\tlabel\n" + "".join(f"good {i}\t1\nbad {i}\t0\n" for i in range(20)))
    ok = CliRunner().invoke(
        app, ["train", "prepare", f"run_dir={run}", *MICRO, f"labelled={enough}", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["cls_rows"]["val"] >= 2


def test_scratch_baseline_and_missing_backbone(prepared, tmp_path):
    run = _copy_prepared(prepared, tmp_path / "run")
    result = CliRunner().invoke(app, ["train", "finetune", f"run_dir={run}", *MICRO])
    assert result.exit_code == 2 and "init=scratch" in result.output
    # a budget on a big set: 5 batches per epoch, each epoch a fresh permutation
    scratch = loop.finetune(_cfg(run, "init=scratch", "ft_epochs=2", "ft_steps_per_epoch=5"))
    assert scratch.status == "completed" and scratch.metrics["init_from"] is None
    assert scratch.step == 10 and [h["epoch"] for h in scratch.metrics["history"]] == [1, 2]
    assert 0.0 <= scratch.metrics["best_val_accuracy"] <= 1.0


@pytest.mark.slow
def test_real_data_sst2_and_wikitext(shared_data, tmp_path):
    """Real files through the same path: WikiText-2 corpus, an SST-2 slice, SST-2 dev as test."""
    rows = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "sst2-slice.tsv").write_text("\n".join(rows[:3001]) + "\n", encoding="utf-8")
    dev_rows = len((shared_data / "sst2" / "dev.tsv").read_text(encoding="utf-8").strip().splitlines()) - 1
    run = tmp_path / "run"
    args = [
        "cycle", f"run_dir={run}", *MICRO, "vocab_size=1024", "max_steps=40",
        f"corpus={shared_data / 'wikitext-2' / 'valid.txt'}", f"labelled={tmp_path / 'sst2-slice.tsv'}",
        f"labelled_test={shared_data / 'sst2' / 'dev.tsv'}", "pretrain_on_labelled=true", "--json",
    ]  # fmt: skip
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    assert report["prepare"]["classes"] == ["0", "1"]
    assert report["prepare"]["cls_rows"]["test"] == dev_rows
    assert report["summary"]["test_ppl"] < 1024  # learnt something over uniform
    assert report["test"]["metrics"]["classification"]["n"] == dev_rows


def test_early_stopping_keeps_the_best_checkpoint(prepared, tmp_path):
    run = _copy_prepared(prepared, tmp_path / "run")
    # lr=0: the first evaluation is the best one and every later one fails to improve
    result = loop.pretrain(_cfg(run, "lr=0", "max_steps=40", "eval_every=2", "patience=2"))
    assert result.status == "early_stopped" and result.step == 6
    assert ckpt.read_manifest(run / "checkpoints" / "best")["step"] == 2
    last = ckpt.read_manifest(run / "checkpoints" / "last")
    assert last["step"] == 6 and last["status"] == "early_stopped"
    # rerunning with resume=auto does not train past an early stop
    assert loop.pretrain(_cfg(run, "lr=0", "max_steps=40", "eval_every=2", "patience=2")).step == 6


def test_resume_refuses_another_engines_optimizer_state(prepared, tmp_path):
    run = _copy_prepared(prepared, tmp_path / "run")
    loop.pretrain(_cfg(run, "max_steps=4"))
    manifest_path = run / "checkpoints" / "last" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["engine"] = "tensorflow"  # as if the TF engine had written this checkpoint
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(loop.ResumeError, match=r"written by engine 'tensorflow'.*resume=never"):
        loop.pretrain(_cfg(run, "max_steps=8"))
    assert loop.pretrain(_cfg(run, "max_steps=8", "resume=never")).status == "completed"


def test_fp16_steps_the_grad_scaler_skips_are_counted_not_fatal(prepared, tmp_path):
    """torch's GradScaler runs on CPU: a scale too large for fp16 overflows the gradients."""
    run = _copy_prepared(prepared, tmp_path / "run")
    skipped_at: list[int] = []

    def overflow_next_step(step: int, engine) -> None:
        if step == 3:
            engine.scaler.update(new_scale=2.0**24)  # the next steps' fp16 gradients overflow
        if engine.scaler.get_scale() < 2.0**24 and not skipped_at:
            skipped_at.append(step)

    result = loop.pretrain(_cfg(run, "dtype=fp16", "device=cpu", "log_every=1"), on_step=overflow_next_step)
    assert result.status == "completed" and result.step == 12
    assert result.metrics["device"]["dtype"] == "fp16"
    skipped = result.metrics["skipped_steps"]
    assert skipped >= 1 and skipped_at
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["stage"] == "pretrain" and "loss" in r]
    assert sum(r["skipped_steps"] for r in steps) == skipped
    assert all(r["grad_norm"] is None for r in steps if r["skipped_steps"])  # strict JSON, no NaN
    assert ckpt.read_manifest(run / "checkpoints" / "last")["state"]["skipped_steps"] == skipped


def _as_written_before_the_stage_loop(path: Path) -> None:
    """Rewrite a checkpoint's manifest as envkit-checkpoint/1 had it (see V1_* in test_train_stage)."""
    mpath = path / "manifest.json"
    m = json.loads(mpath.read_text())
    state, history = m.pop("state"), m.pop("history")
    cfg = m["config"]
    flat: dict = {"model": cfg["model"], "preset": cfg["preset"]}
    for section in ("data", "pretrain", "optim", "runtime"):
        flat.update(cfg[section])
    flat.update({(k if k == "init" else f"ft_{k}"): v for k, v in cfg["finetune"].items()})
    m.update(format="envkit-checkpoint/1", config=flat)
    if m["stage"] == "pretrain":
        m.update(best_val_loss=state["best_value"], evals_since_best=state["since_best"])
    else:
        best = state["best_record"]
        m.update(
            best_val_accuracy=-1.0 if state["best_value"] is None else state["best_value"],
            best_val_f1=best.get("val_f1", -1.0),
            best_epoch=best.get("epoch"),
            epochs_since_best=state["since_best"],
            history=history,
        )
    mpath.write_text(json.dumps(m))


def test_a_checkpoint_written_before_the_stage_loop_still_resumes_bit_exactly(prepared, tmp_path):
    full = _copy_prepared(prepared, tmp_path / "full")
    loop.pretrain(_cfg(full))
    loop.finetune(_cfg(full, "ft_epochs=2"))
    part = _copy_prepared(prepared, tmp_path / "part")

    def preempt(at: int):
        def hook(step: int, engine) -> None:
            if step == at:
                os.kill(os.getpid(), signal.SIGTERM)

        return hook

    assert loop.pretrain(_cfg(part), on_step=preempt(7)).status == "preempted"  # after the eval at 6
    _as_written_before_the_stage_loop(part / "checkpoints" / "last")
    assert ckpt.read_manifest(part / "checkpoints" / "last")["format"] == "envkit-checkpoint/1"
    assert loop.pretrain(_cfg(part)).status == "completed"
    assert loop.finetune(_cfg(part, "ft_epochs=2"), on_step=preempt(20)).status == "preempted"
    _as_written_before_the_stage_loop(part / "checkpoints" / "finetune-last")
    resumed = loop.finetune(_cfg(part, "ft_epochs=2"))
    assert resumed.status == "completed" and [h["epoch"] for h in resumed.metrics["history"]] == [1, 2]
    for name in ("last", "finetune-last"):
        a, b = ckpt.load_weights(full / "checkpoints" / name), ckpt.load_weights(part / "checkpoints" / name)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
