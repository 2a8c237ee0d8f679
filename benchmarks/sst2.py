"""SST-2 on a CPU: pretrain on WikiText-2 + SST-2 sentences, fine-tune, report dev accuracy.

Two runs share one prepared directory:
  1. pretrained: pretrain a small GPT on WikiText-2 (valid split, ~217k words) plus the
     SST-2 training sentences as unlabelled text, then fine-tune on sst2/train.tsv;
  2. scratch: the same fine-tuning from random weights (init=scratch), the baseline.
Both report accuracy/F1 on sst2/dev.tsv (the test split here). Target: pretrained
dev accuracy >= 0.80 within 15 minutes of a 2-core CPU, and pretrained > scratch.

    python benchmarks/sst2.py --out results/sst2.json            # full budget
    python benchmarks/sst2.py --pretrain-steps 300 --ft-epochs 1  # a reduced budget

Everything goes through `envkit train` (same code as users run); timings are wall
clock of each stage, with the machine's load average recorded next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _train(command: str, overrides: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "training", command, *overrides, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    text = proc.stdout
    data = json.loads(text[text.index("{\n") :])  # progress lines come first on stdout
    data["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"{command:9s} {data['wall_s']:7.1f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="the shared data folder (sst2/, wikitext-2/)")
    parser.add_argument("--run-root", default="runs/sst2")
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    parser.add_argument("--ft-epochs", type=int, default=1)
    parser.add_argument("--ft-steps-per-epoch", type=int, default=700, help="0 = the whole train split")
    parser.add_argument(
        "--keep", action="store_true", help="keep runs/sst2: finished stages are reused (resume=auto)"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-scratch", action="store_true", help="skip the init=scratch baseline")
    parser.add_argument("--out", default="results/sst2.json")
    args = parser.parse_args(argv)

    data = Path(args.data)
    for rel in ("sst2/train.tsv", "sst2/dev.tsv", "wikitext-2/valid.txt"):
        if not (data / rel).is_file():
            raise SystemExit(f"{data / rel} is missing; point --data at the shared data folder")
    root = Path(args.run_root)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    prepared = root / "prepared"
    common = [
        f"corpus={data / 'wikitext-2' / 'valid.txt'}",
        f"labelled={data / 'sst2' / 'train.tsv'}",
        f"labelled_test={data / 'sst2' / 'dev.tsv'}",
        "pretrain_on_labelled=true",  # SST-2 train sentences join the LM corpus (no labels)
        "val_fraction=0.05", "test_fraction=0.05",
        f"prepared_dir={prepared}",
        "vocab_size=4096", "block_size=64", "n_layer=4", "n_head=4", "n_embd=128", "dropout=0.1",
        "batch_size=32", f"max_steps={args.pretrain_steps}", "lr=2e-3", "warmup_steps=100",
        f"eval_every={max(100, args.pretrain_steps // 5)}", "eval_batches=8",
        f"checkpoint_every={max(100, args.pretrain_steps // 5)}", "log_every=50",
        "max_len=64", f"ft_epochs={args.ft_epochs}", f"ft_steps_per_epoch={args.ft_steps_per_epoch}",
        "ft_batch_size=64", "ft_lr=5e-4",
        "ft_weight_decay=0.05", "progress=plain", f"threads={args.threads}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    pre_dir = root / "pretrained"
    stages = {"prepare": _train("prepare", [f"run_dir={pre_dir}", *common])}
    stages["pretrain"] = _train("pretrain", [f"run_dir={pre_dir}", *common])
    stages["finetune"] = _train("finetune", [f"run_dir={pre_dir}", *common])
    stages["test"] = _train("test", [f"run_dir={pre_dir}", *common])
    pretrained_wall = time.perf_counter() - t0
    pretrained = stages["test"]["metrics"]["classification"]
    out: dict[str, Any] = {
        "benchmark": "sst2",
        "config": common,
        "pretrained": {
            "dev_accuracy": pretrained["accuracy"],
            "dev_f1": pretrained["f1"],
            "dev_n": pretrained["n"],
            "confusion": pretrained["confusion"],
            "val_ppl": stages["pretrain"]["metrics"].get("val_ppl"),
            "best_val_accuracy": stages["finetune"]["metrics"]["best_val_accuracy"],
            "wall_s": round(pretrained_wall, 1),
            "stage_wall_s": {k: v["wall_s"] for k, v in stages.items()},
        },
    }
    print(
        f"pretrained: dev accuracy {pretrained['accuracy']:.4f} in {pretrained_wall / 60:.1f} min", flush=True
    )
    if not args.skip_scratch:
        scratch_dir = root / "scratch"
        t1 = time.perf_counter()
        ft = _train("finetune", [f"run_dir={scratch_dir}", *common, "init=scratch"])
        test = _train("test", [f"run_dir={scratch_dir}", *common, "init=scratch"])
        c = test["metrics"]["classification"]
        out["scratch"] = {
            "dev_accuracy": c["accuracy"],
            "dev_f1": c["f1"],
            "best_val_accuracy": ft["metrics"]["best_val_accuracy"],
            "wall_s": round(time.perf_counter() - t1, 1),
        }
        out["pretrained_beats_scratch"] = pretrained["accuracy"] > c["accuracy"]
        print(f"scratch:    dev accuracy {c['accuracy']:.4f}", flush=True)
    out["target"] = {"dev_accuracy": 0.80, "minutes": 15}
    out["meets_target"] = pretrained["accuracy"] >= 0.80 and pretrained_wall <= 15 * 60
    out["machine"] = {"cores": os.cpu_count(), "load_avg_1m_end": os.getloadavg()[0]}
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
