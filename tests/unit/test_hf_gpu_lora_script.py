"""benchmarks/gpu_lora_check.py: the LoRA throughput step of the GPU check (tiny on the CPU, 1 B on a GPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_lora_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_lora_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_tiny_run_on_the_cpu_reports_throughput_and_trains_adapters_only(tmp_path):
    out = tmp_path / "lora.json"
    code = _script().main(
        ["--tiny", "--device", "cpu", "--batch", "2", "--seq-len", "16", "--steps", "2", "--warmup", "0",
         "--out", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0 and result["loss_finite"]
    assert 0 < result["trainable_params"] < result["params"] / 5
    assert result["tokens_per_s"] > 0 and result["seq_len"] == 16


def test_the_1b_shape_is_about_a_billion_parameters():
    import torch
    from transformers import AutoModelForCausalLM

    from training.hf.random_model import random_config

    config = random_config("llama", **_script().SHAPES["1b"])
    with torch.device("meta"):  # no memory: shapes only
        model = AutoModelForCausalLM.from_config(config)
    assert 0.9e9 < sum(p.numel() for p in model.parameters()) < 1.1e9


@pytest.mark.gpu
@pytest.mark.slow
def test_1b_lora_bf16_on_the_gpu(tmp_path):
    out = tmp_path / "lora.json"
    assert _script().main(["--steps", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["autocast"] == "bf16" and result["peak_mem_gib"] > 0
