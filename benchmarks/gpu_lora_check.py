"""LoRA fine-tuning throughput of a ~1 B-parameter Llama-shaped model (random weights, bf16) on one GPU.

The model is built from a transformers `LlamaConfig` (no download): 16 layers, width 2048,
SwiGLU MLP, vocabulary 32,000, about 0.94 B parameters. The frozen base is held in bf16;
peft keeps the LoRA adapters (attention q/k/v/o, rank 16) in fp32 and the step runs under
bf16 autocast with gradient checkpointing, as `envkit train finetune pretrained=... hf.mode=lora`
does on a GPU. Reported: tokens/s, step time, peak GPU memory, parameter counts, as JSON.

    python benchmarks/gpu_lora_check.py --out results/gpu_lora.json      # on a GPU host
    python benchmarks/gpu_lora_check.py --tiny --device cpu              # a seconds-long smoke run

The GPU engineer's `benchmarks/gpu_check.sh` calls this as its LoRA step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # ~0.94 B parameters: 2 x 65.5 M embeddings/head + 16 x 50.3 M per layer
    "1b": {"vocab_size": 32000, "hidden": 2048, "layers": 16, "heads": 16, "context": 2048},
    "tiny": {"vocab_size": 512, "hidden": 64, "layers": 2, "heads": 4, "context": 128},
}


def build(shape: dict[str, int], device: Any, dtype: Any, rank: int, grad_ckpt: bool) -> Any:
    """The random Llama, LoRA-wrapped, behind the training loop's (x, y) -> (logits, loss) contract."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.hf.lora import apply_lora
    from training.hf.module import HFTaskModule
    from training.hf.random_model import random_config
    from training.hf.settings import HFSettings

    config = random_config("llama", **shape)
    config.pad_token_id = 0
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = apply_lora(
        model, HFSettings(model="random", task="causal_lm", mode="lora", lora_r=rank), "causal_lm"
    )
    return HFTaskModule(model, "causal_lm", pad_token_id=0).to(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device gpu but torch sees no CUDA GPU; use --device cpu (with --tiny)")
    shape = SHAPES["tiny" if args.tiny else "1b"]
    base_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    module = build(shape, device, base_dtype, args.rank, grad_ckpt=not args.no_grad_checkpointing)
    total = sum(p.numel() for p in module.parameters())
    trainable = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    seq = min(args.seq_len, shape["context"])
    gen = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, shape["vocab_size"], (args.batch, seq + 1), generator=gen).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        with autocast:
            _, loss = module(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    module.train()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    out: dict[str, Any] = {
        "benchmark": "gpu_lora_check",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": shape,
        "params": total,
        "trainable_params": sum(p.numel() for p in trainable),
        "lora_rank": args.rank,
        "base_dtype": str(base_dtype).removeprefix("torch."),
        "autocast": "bf16" if device.type == "cuda" else "off",
        "gradient_checkpointing": not args.no_grad_checkpointing,
        "batch": args.batch,
        "seq_len": seq,
        "steps": args.steps,
        "step_ms_median": round(median * 1000, 2),
        "tokens_per_s": round(args.batch * seq / median, 1),
        "final_loss": losses[-1],
        "loss_finite": all(v == v and abs(v) != float("inf") for v in losses),
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["torch_cuda"] = torch.version.cuda
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape: a smoke run on any machine")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-grad-checkpointing", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)
    return 0 if result["loss_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
