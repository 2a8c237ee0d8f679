"""Pretraining tokens/s: the envkit PyTorch engine vs Hugging Face GPT2LMHeadModel, one run.

Every contender trains the same model shape (layers, heads, width, context,
vocabulary) on the same list of batches, with the same threads, AdamW settings
and gradient clipping. The HF model gets a plain PyTorch loop (forward, cross
entropy on the same next-token targets, backward, clip, step). When TensorFlow
is importable, `benchmarks/throughput_tf.py`'s `contenders()` join the same run.

Each contender runs `--rounds` times, interleaved (A B A B ...), so a busy,
shared machine slows all of them alike; the JSON keeps every round and the
median.

    python benchmarks/throughput.py --preset tiny --steps 30 --out results/throughput.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Batches = list[tuple[np.ndarray, np.ndarray]]
RunFn = Callable[[Batches, int], dict[str, Any]]


def _result(batches: Batches, warmup: int, seconds: float, losses: list[float]) -> dict[str, Any]:
    tokens = sum(int(x.size) for x, _ in batches[warmup:])
    return {
        "steps": len(batches) - warmup,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
    }


def engine_contender(model_cfg: Any, lr: float, seed: int, threads: int) -> RunFn:
    """The envkit PyTorch engine exactly as `envkit train pretrain` runs it."""

    def run(batches: Batches, warmup: int) -> dict[str, Any]:
        from training.core.config import TrainConfig
        from training.engines.base import DistInfo, LMBatch, OptimSpec
        from training.engines.torch_engine import TorchEngine

        engine = TorchEngine(
            TrainConfig(model=model_cfg, runtime={"seed": seed, "threads": threads, "device": "cpu"}),
            DistInfo(),
        )
        engine.build("lm", model_cfg, 0, None, OptimSpec(weight_decay=0.1))
        engine.set_lr(lr)
        losses, t0 = [], time.perf_counter()
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                t0 = time.perf_counter()
            losses.append(engine.train_step([LMBatch(x, y)], grad_clip=1.0).loss)
        return _result(batches, warmup, time.perf_counter() - t0, losses)

    return run


def hf_contender(model_cfg: Any, lr: float, seed: int) -> RunFn:
    """transformers.GPT2LMHeadModel of the same shape, trained by a plain PyTorch loop."""

    def run(batches: Batches, warmup: int) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=model_cfg.vocab_size, n_positions=model_cfg.block_size, n_embd=model_cfg.n_embd,
            n_layer=model_cfg.n_layer, n_head=model_cfg.n_head, activation_function="gelu_new",
            resid_pdrop=model_cfg.dropout, embd_pdrop=model_cfg.dropout, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
        model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        losses, t0 = [], time.perf_counter()
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                t0 = time.perf_counter()
            xs, ys = torch.from_numpy(x), torch.from_numpy(y)
            logits = model(input_ids=xs).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), ys.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return _result(batches, warmup, time.perf_counter() - t0, losses)

    return run


def contenders(model_cfg: Any, lr: float, seed: int, threads: int, with_tf: bool) -> dict[str, RunFn]:
    out = {
        "pytorch-engine": engine_contender(model_cfg, lr, seed, threads),
        "hf-gpt2-plain-loop": hf_contender(model_cfg, lr, seed),
    }
    if with_tf and importlib.util.find_spec("tensorflow") is not None:
        tf_path = Path(__file__).with_name("throughput_tf.py")
        if tf_path.is_file():
            spec = importlib.util.spec_from_file_location("throughput_tf", tf_path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            out.update(module.contenders(model_cfg, lr=lr, seed=seed, threads=threads))
    return out


def random_batches(vocab: int, batch: int, block: int, n: int, seed: int = 0) -> Batches:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        window = rng.integers(0, vocab, size=(batch, block + 1), dtype=np.int64)
        out.append((window[:, :-1], window[:, 1:]))
    return out


def write_results(out: dict[str, Any], dest: str, ratios: dict[str, float]) -> None:
    """Write the JSON document and print the ratios (shared with throughput_tf.py)."""
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per contender")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = the preset's batch_size")
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--no-tf", action="store_true", help="skip the TensorFlow contenders")
    parser.add_argument("--only", action="append", default=[], help="run only these contenders")
    parser.add_argument("--out", default="results/throughput.json")
    args = parser.parse_args(argv)

    import torch

    from training.core.config import resolve_config

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cfg = resolve_config(args.preset, None, [])
    batch = args.batch_size or cfg.pretrain.batch_size
    batches = random_batches(cfg.model.vocab_size, batch, cfg.model.block_size, args.warmup + args.steps)
    runs = contenders(cfg.model, cfg.pretrain.lr, cfg.runtime.seed, threads, with_tf=not args.no_tf)
    runs = {k: v for k, v in runs.items() if not args.only or k in args.only}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            result = run(batches, args.warmup)
            rounds[name].append(result)
            print(f"round {r + 1} {name:26s} {result['tokens_per_s']:>12,.0f} tokens/s", flush=True)
    median = {name: statistics.median(x["tokens_per_s"] for x in rs) for name, rs in rounds.items()}
    ratios = {
        f"pytorch-engine/{other}": median["pytorch-engine"] / median[other]
        for other in median
        if other != "pytorch-engine" and "pytorch-engine" in median
    }
    out = {
        "benchmark": "throughput",
        "preset": args.preset,
        "model": {
            k: getattr(cfg.model, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        },
        "batch_size": batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "threads": threads,
        "torch": torch.__version__,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "median_tokens_per_s": median,
        "ratios": ratios,
        "results": rounds,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_results(out, args.out, ratios)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
