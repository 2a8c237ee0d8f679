"""torchrun with 2 CPU processes (gloo): DDP replicas stay identical, rank 0 saves, world size guarded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from envkit.cli import app  # noqa: E402
from training.core import checkpoint as ckpt  # noqa: E402
from training.core.config import resolve_config  # noqa: E402
from training.core.prepare import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MICRO = [
    "synthetic_docs=300", "synthetic_reviews=300", "vocab_size=300", "block_size=32", "n_layer=1",
    "n_head=2", "n_embd=32", "batch_size=4", "grad_accum=2", "max_steps=6", "eval_every=3",
    "eval_batches=2", "checkpoint_every=3", "log_every=1", "warmup_steps=1", "max_len=32",
    "threads=1", "progress=plain", "dropout=0.1",
]  # fmt: skip

# Runs under torchrun: the real loop, with a step hook that gathers every rank's weights
# and the batch it trained on, so replica equality is checked after every optimizer step.
WORKER = """
import hashlib, json, sys
import numpy as np
import torch.distributed as dist
from training.core import loop
from training.core.config import resolve_config

cfg = resolve_config(None, None, sys.argv[2:])
seen = []

def check(step, engine):
    weights = engine.export_weights()
    digest = hashlib.sha256(b"".join(weights[k].tobytes() for k in sorted(weights))).hexdigest()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest)
    seen.append({"step": step, "digests": gathered})

result = loop.pretrain(cfg, on_step=check)
if dist.get_rank() == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump({"status": result.status, "steps": seen}, fh)
"""


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical_and_rank0_saves(tmp_path):
    run = tmp_path / "run"
    overrides = [f"run_dir={run}", *MICRO]
    prepare(resolve_config(None, None, overrides))
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(tmp_path / "worker.py"), str(out), *overrides]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["status"] == "completed" and [s["step"] for s in report["steps"]] == list(range(1, 7))
    for s in report["steps"]:
        assert s["digests"][0] == s["digests"][1], f"replicas differ after step {s['step']}"
    assert len({s["digests"][0] for s in report["steps"]}) == 6  # and they did train

    manifest = ckpt.read_manifest(run / "checkpoints" / "last")
    assert manifest["world_size"] == 2 and manifest["step"] == 6
    weights = ckpt.load_weights(run / "checkpoints" / "last")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights)
    assert all(np.isfinite(v).all() for v in weights.values())
    state = torch.load(run / "checkpoints/last/optimizer.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's RNG state, for its dropout stream
    assert not list(run.glob("**/*rank1*"))

    # a single process cannot continue a 2-process run: refused with the reason
    result = CliRunner().invoke(app, ["train", "pretrain", *overrides, "max_steps=8"])
    assert result.exit_code == 2
    assert "written by 2 process(es) and this run has 1" in result.output


@pytest.mark.slow
def test_fsdp2_option_saves_full_unsharded_weights_and_resumes(tmp_path):
    run = tmp_path / "run"
    overrides = [f"run_dir={run}", *MICRO, "n_layer=2", "distributed=fsdp"]
    prepare(resolve_config(None, None, overrides))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def torchrun(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "training", "pretrain", *overrides, *extra]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)

    first = torchrun("max_steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    weights = ckpt.load_weights(run / "checkpoints" / "last")
    assert weights["h.1.mlp.c_fc.weight"].shape == (128, 32)  # gathered, not a shard
    assert weights["wte.weight"].shape == (300, 32)
    second = torchrun("max_steps=6")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    manifest = ckpt.read_manifest(run / "checkpoints" / "last")
    assert (
        manifest["step"] == 6
        and manifest["world_size"] == 2
        and manifest["config"]["runtime"]["distributed"] == "fsdp"
    )
