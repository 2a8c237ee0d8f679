"""The TensorFlow engine through the shared loop: learning, resume, SIGTERM, replicas, weight moves.

Runs use a small model on a small prepared set (prepared once per module).
Subprocesses are used where TensorFlow's process-wide settings matter (two
logical CPU devices, a real signal to the CLI, a Python without torch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from training.core import checkpoint as ckpt
from training.core import loop
from training.core.config import TrainConfig, resolve_config
from training.core.metrics import read_metrics
from training.core.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]
ENVKIT = Path(sys.executable).parent / "envkit"
SMALL = [
    "engine=tensorflow", "n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "vocab_size=384",
    "dropout=0.1", "synthetic_docs=400", "synthetic_reviews=400", "batch_size=8", "grad_accum=2",
    "max_steps=24", "warmup_steps=4", "lr=3e-3", "eval_every=12", "eval_batches=2", "checkpoint_every=12",
    "log_every=4", "ft_epochs=1", "ft_batch_size=16", "progress=off",
]  # fmt: skip


def small_cfg(run_dir: Path, prepared: Path, *extra: str) -> TrainConfig:
    return resolve_config(None, None, [*SMALL, f"run_dir={run_dir}", f"prepared_dir={prepared}", *extra])


def subprocess_env(xla: bool) -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), ENVKIT_TF_XLA="1" if xla else "0")


@pytest.fixture
def no_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    """XLA off: its compile time would dominate a test about something else. The default
    (XLA on) path is what the learning, resume and TF-only tests run."""
    monkeypatch.setenv("ENVKIT_TF_XLA", "0")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tf-prepare")
    cfg = small_cfg(run, run / "prepared")
    prepare(cfg)
    return run / "prepared"


@pytest.fixture(scope="module")
def uninterrupted(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-step TensorFlow pretraining run, start to finish (dropout on, accumulation 2, XLA on)."""
    run = tmp_path_factory.mktemp("tf-uninterrupted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENVKIT_TF_XLA", "1")
        result = loop.pretrain(small_cfg(run, prepared))
    assert result.status == "completed" and result.step == 24
    return run


def test_pretraining_loss_goes_down(uninterrupted: Path) -> None:
    losses = [r["loss"] for r in read_metrics(uninterrupted) if r.get("stage") == "pretrain" and "loss" in r]
    vals = [r["val_loss"] for r in read_metrics(uninterrupted) if "val_loss" in r]
    assert len(losses) >= 5 and len(vals) == 2
    assert losses[-1] < losses[0] - 0.5
    assert vals[-1] < vals[0]


def test_sigterm_then_resume_reproduces_the_uninterrupted_run_bit_exactly(
    prepared: Path, uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVKIT_TF_XLA", "1")  # as the uninterrupted run: the default path
    cfg = small_cfg(tmp_path, prepared)

    def preempt_at_10(step: int, *_: object) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler does before preemption

    first = loop.pretrain(cfg, on_step=preempt_at_10)
    manifest = ckpt.read_manifest(tmp_path / "checkpoints" / "last")
    assert first.status == "preempted" and manifest["status"] == "preempted"
    assert manifest["engine"] == "tensorflow" and 10 <= manifest["step"] < 24
    preempted_at = manifest["step"]

    second = loop.pretrain(cfg)
    assert second.status == "completed" and second.step == 24
    want = ckpt.load_weights(uninterrupted / "checkpoints" / "last")
    got = ckpt.load_weights(tmp_path / "checkpoints" / "last")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    from safetensors.numpy import load_file

    want_opt = load_file(str(uninterrupted / "checkpoints" / "last" / "optimizer.safetensors"))
    got_opt = load_file(str(tmp_path / "checkpoints" / "last" / "optimizer.safetensors"))
    for name in want_opt:
        np.testing.assert_array_equal(got_opt[name], want_opt[name], err_msg=name)
    # the resumed run logged the same losses after the resume point
    want_log = {r["step"]: r["loss"] for r in read_metrics(uninterrupted) if "loss" in r}
    got_log = {
        r["step"]: r["loss"] for r in read_metrics(tmp_path) if "loss" in r and r["step"] > preempted_at
    }
    assert got_log and all(got_log[s] == want_log[s] for s in got_log if s in want_log)


def test_sigterm_to_the_cli_saves_and_exits_zero(prepared: Path, tmp_path: Path) -> None:
    args = [*SMALL, f"run_dir={tmp_path}", f"prepared_dir={prepared}", "max_steps=100000",
            "checkpoint_every=100000", "eval_every=100000", "log_every=1"]  # fmt: skip
    proc = subprocess.Popen(
        [str(ENVKIT), "train", "pretrain", *args],
        cwd=ROOT,
        env=subprocess_env(xla=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and metrics.read_text().count("\n") >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    manifest = ckpt.read_manifest(tmp_path / "checkpoints" / "last")
    assert manifest["status"] == "preempted" and manifest["step"] >= 2
    assert not list((tmp_path / "checkpoints").glob("*.tmp-*"))


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from training.core.config import ModelConfig, TrainConfig
    from training.engines.base import DistInfo, LMBatch, OptimSpec
    from training.engines.tf_engine import TFEngine

    class OneDevice(TFEngine):
        def _make_strategy(self):
            return tf.distribute.get_strategy()

    model = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    rng = np.random.default_rng(0)
    data = rng.integers(1, 64, (6, 8, 17))
    # accumulation over uneven micro-batches: the 5-row one is padded to 8 rows of weight 0,
    # so the second replica's share of it is pure padding and must contribute nothing
    steps = [[(data[2 * i], 8), (data[2 * i + 1], 5)] for i in range(3)]
    out = {}
    for label, engine_cls in (("mirrored", TFEngine), ("single", OneDevice)):
        engine = engine_cls(TrainConfig(model=model, seed=5), DistInfo())
        engine.build("lm", model, 0, None, OptimSpec(weight_decay=0.1))
        engine.set_lr(3e-3)
        losses = []
        for micro in steps:
            batches = [LMBatch(rows[:n, :-1], rows[:n, 1:]) for rows, n in micro]
            losses.append(engine.train_step(batches, 1.0).loss)
        final = engine.export_weights()
        replicas_equal = all(
            all(np.array_equal(c.numpy(), p.value.values[0].numpy()) for c in p.value.values)
            for p in engine.params
        ) if label == "mirrored" else True
        np.savez(sys.argv[1] + f"/{label}.npz", **final)
        out[label] = {"replicas": engine.local_replicas, "losses": losses, "replicas_equal": replicas_equal,
                      "strategy": type(engine.strategy).__name__}
    print(json.dumps(out))
    """
)


def test_mirrored_strategy_over_two_logical_cpus_equals_one_device(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=subprocess_env(xla=False),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    mirrored, single = out["mirrored"], out["single"]
    assert mirrored["strategy"] == "MirroredStrategy" and mirrored["replicas"] == 2
    assert single["replicas"] == 1
    assert mirrored["replicas_equal"]
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-5)
    a, b = np.load(tmp_path / "mirrored.npz"), np.load(tmp_path / "single.npz")
    for name in a.files:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


MULTI_WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from training.core.config import ModelConfig, TrainConfig
    from training.engines.base import DistInfo, LMBatch, OptimSpec
    from training.engines.tf_engine import TFEngine

    dist = DistInfo.from_env()
    model = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    data = np.random.default_rng(0).integers(1, 64, (2, 8, 17))  # 2 steps x 8 rows
    engine = TFEngine(TrainConfig(model=model, seed=5), dist)
    engine.build("lm", model, 0, None, OptimSpec(weight_decay=0.1))
    engine.set_lr(3e-3)
    losses = []
    for step in range(2):
        share = 8 // dist.world_size  # worker r trains on its own rows, as the loop's samplers give them
        rows = data[step][share * dist.rank : share * (dist.rank + 1)]
        losses.append(engine.train_step([LMBatch(rows[:, :-1], rows[:, 1:])], 1.0).loss)
    reduced = engine.all_reduce_sum(np.array([dist.rank + 1.0]))
    np.savez(f"{sys.argv[1]}/rank{dist.rank}-of{dist.world_size}.npz", **engine.export_weights())
    print(json.dumps({"losses": losses, "strategy": type(engine.strategy).__name__,
                      "replicas": engine.strategy.num_replicas_in_sync, "reduced": reduced.tolist()}))
    """
)


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_from_tf_config(tmp_path: Path) -> None:
    """Two worker processes on this host, joined by TF_CONFIG, train as one process on all rows."""
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = dict(subprocess_env(xla=False), TF_CONFIG=tf_config)  # DistInfo reads rank/world from it
        for torchrun_key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(torchrun_key, None)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", MULTI_WORKER_SCRIPT, str(tmp_path)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    single = subprocess.run(
        [sys.executable, "-c", MULTI_WORKER_SCRIPT, str(tmp_path)],
        cwd=ROOT, env=subprocess_env(xla=False), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    outs = []
    for proc in procs:
        try:
            out, errors = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, errors[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert single.returncode == 0, single.stderr[-3000:]
    for out in outs:
        assert out["strategy"] == "CollectiveAllReduceStrategy" and out["replicas"] == 2
        assert out["reduced"] == [3.0]  # 1 + 2: all_reduce_sum reaches every worker
    np.testing.assert_allclose(
        outs[0]["losses"], json.loads(single.stdout.strip().splitlines()[-1])["losses"], rtol=1e-5
    )
    w0, w1, one = (np.load(tmp_path / f"{name}.npz") for name in ("rank0-of2", "rank1-of2", "rank0-of1"))
    for name in w0.files:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
        np.testing.assert_allclose(w0[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _torch_engine_available() -> bool:
    try:
        import torch  # noqa: F401

        from training.engines.torch_engine import TorchEngine  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _torch_engine_available(), reason="the PyTorch engine is not importable here")
@pytest.mark.usefixtures("no_xla")
def test_weights_move_between_engines(prepared: Path, uninterrupted: Path, tmp_path: Path) -> None:
    from training.core.data import lm_eval_batches
    from training.core.prepare import open_prepared
    from training.engines import get_engine
    from training.engines.base import DistInfo, OptimSpec

    # 1. the same checkpoint evaluates to the same loss in both engines
    best = uninterrupted / "checkpoints" / "best"
    weights = ckpt.load_weights(best)
    cfg = small_cfg(tmp_path / "eval", prepared)
    data = open_prepared(cfg)
    batch = lm_eval_batches(data.lm_shards("val"), cfg.model.block_size, 8, 1, 0, 1)[0]
    losses = {}
    for name in ("tensorflow", "pytorch"):
        engine = get_engine(name)(cfg, DistInfo())
        engine.build("lm", cfg.model, data.pad_id, weights, OptimSpec(0.0))
        losses[name] = engine.eval_step(batch).loss_sum
    assert losses["tensorflow"] == pytest.approx(losses["pytorch"], rel=1e-5)

    # 2. pretrained with TensorFlow, fine-tuned with PyTorch
    tf_to_torch = tmp_path / "tf-to-torch"
    shutil.copytree(uninterrupted / "checkpoints", tf_to_torch / "checkpoints")
    result = loop.finetune(small_cfg(tf_to_torch, prepared, "engine=pytorch"))
    assert result.status == "completed" and result.metrics["init_from"].endswith("best")
    assert ckpt.read_manifest(tf_to_torch / "checkpoints" / "finetune-last")["engine"] == "pytorch"

    # 3. pretrained with PyTorch, fine-tuned with TensorFlow
    torch_to_tf = tmp_path / "torch-to-tf"
    loop.pretrain(small_cfg(torch_to_tf, prepared, "engine=pytorch", "max_steps=12"))
    result = loop.finetune(small_cfg(torch_to_tf, prepared, "engine=tensorflow"))
    assert result.status == "completed" and result.metrics["best_val_accuracy"] > 0.0
    manifest = ckpt.read_manifest(torch_to_tf / "checkpoints" / "finetune-last")
    assert manifest["engine"] == "tensorflow" and manifest["init_from"].endswith("best")


# A Python in which torch does not exist: every meta-path finder answers "not found" for torch,
# so importlib.util.find_spec("torch") is None and `import torch` raises ModuleNotFoundError,
# exactly as in a TensorFlow-only venv or image.
TF_ONLY_WRAPPER = textwrap.dedent(
    """
    import json, sys

    class HideTorch:
        def __init__(self, inner):
            self.inner = inner
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None
            find = getattr(self.inner, "find_spec", None)
            return find(name, path, target) if find else None
        def __getattr__(self, attr):
            return getattr(self.inner, attr)

    sys.meta_path[:] = [HideTorch(f) for f in sys.meta_path]
    from envkit.cli import main
    sys.argv = ["envkit", *sys.argv[1:]]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    print("TORCH_LOADED=" + json.dumps("torch" in sys.modules))
    sys.exit(code)
    """
)


@pytest.mark.slow
def test_tiny_cycle_in_a_python_without_torch(tmp_path: Path) -> None:
    args = ["train", "cycle", "--preset", "tiny", f"run_dir={tmp_path}", "max_steps=60", "eval_every=30",
            "checkpoint_every=30", "ft_epochs=1", "synthetic_docs=800", "synthetic_reviews=800",
            "progress=plain"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", TF_ONLY_WRAPPER, *args],
        cwd=ROOT,
        env=subprocess_env(xla=True),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "TORCH_LOADED=false" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["engine"] == "tensorflow"  # engine=auto chose the only framework present
    assert report["test"]["metrics"]["classification"]["n"] > 0
    for name in ("last", "best", "finetune-best"):
        manifest = ckpt.read_manifest(tmp_path / "checkpoints" / name)
        assert manifest["engine"] == "tensorflow"
    assert list((tmp_path / "plots").glob("*.png"))
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


# TensorFlow's own start-up lines: absl's banner, oneDNN's notice (`I0000 ... port.cc`), CPU features
TF_NOISE = ("oneDNN custom operations", "I0000 ", "absl::InitializeLog", "cpu_feature_guard")


@pytest.mark.slow  # two TensorFlow start-ups in subprocesses
def test_the_cli_keeps_tensorflow_start_up_noise_off_stderr(prepared: Path, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in subprocess_env(xla=False).items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "ENVKIT_TF_VERBOSE")
    }
    args = [*SMALL, f"prepared_dir={prepared}", "max_steps=2", "eval_every=2", "progress=plain"]
    quiet = subprocess.run(
        [str(ENVKIT), "train", "pretrain", f"run_dir={tmp_path / 'quiet'}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "pretrain step 2" in quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in TF_NOISE)], quiet.stderr
    # --verbose brings TensorFlow's log back (so the check above can see it when it is there)
    loud = subprocess.run(
        [str(ENVKIT), "train", "pretrain", "--verbose", f"run_dir={tmp_path / 'loud'}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "oneDNN custom operations" in loud.stderr or "I0000 " in loud.stderr, loud.stderr[-2000:]
