"""A real 2-process torchrun all-reduce over gloo, and the host memory copy."""

from __future__ import annotations

import pytest

from envkit.bench.allreduce import AllreduceOptions, parse_bytes, resolve, run_allreduce
from envkit.bench.errors import BenchInputError
from envkit.bench.memory import MemoryOptions, run_memory
from envkit.bench.report import validate

pytest.importorskip("torch")


def test_two_process_gloo_allreduce_sums_correctly():
    doc = run_allreduce(
        AllreduceOptions(nproc=2, backend="gloo", min_bytes=1024, max_bytes=64 * 1024, min_time_s=0.01)
    )
    assert validate(doc) == [], doc["summary"].get("message")
    assert doc["summary"]["status"] == "ok", doc["summary"].get("message")
    assert [r["bytes"] for r in doc["results"]] == [1024 * 2**i for i in range(7)]
    for r in doc["results"]:
        assert r["correct"] is True and r["world_size"] == 2
        assert r["algbw_gbps"] > 0
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (2 - 1) / 2)
    assert doc["summary"]["busbw_factor"] == 1.0


def test_allreduce_input_errors():
    assert parse_bytes("1KiB", "x") == 1024 and parse_bytes("64MiB", "x") == 64 * 1024**2
    assert parse_bytes("1g", "x") == 1024**3 and parse_bytes("4096", "x") == 4096
    for bad in ("0", "-1KiB", "lots", "5TB"):
        with pytest.raises(BenchInputError):
            parse_bytes(bad, "max-size")
    with pytest.raises(BenchInputError, match="below"):
        resolve(AllreduceOptions(backend="gloo", min_bytes=4096, max_bytes=1024))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BenchInputError, match="nccl"):
            resolve(AllreduceOptions(backend="nccl"))


def test_host_memory_copy_bandwidth():
    doc = run_memory(MemoryOptions(device="cpu", size_mib=64, min_time_s=0.0, min_iters=3, max_iters=3))
    assert validate(doc) == []
    (result,) = doc["results"]
    assert result["test"] == "host_copy" and result["correct"] and result["status"] == "ok"
    assert result["bytes_moved_per_call"] == 2 * 64 * 1024**2  # read + write
    assert result["gbps"]["median"] == pytest.approx(2 * 64 * 1024**2 / result["seconds"]["median"] / 1e9)
    with pytest.raises(BenchInputError):
        run_memory(MemoryOptions(size_mib=0))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_worker_flags_a_wrong_sum(monkeypatch, tmp_path):
    """One in-process rank whose all-reduce corrupts one element: reported incorrect, no bandwidth."""
    import json

    import torch.distributed as dist

    from envkit.bench import allreduce_worker

    real_all_reduce = dist.all_reduce
    calls = {"n": 0}

    def corrupting_all_reduce(tensor, *args, **kwargs):
        result = real_all_reduce(tensor, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # the first call of the first size is the checked one
            tensor[0] += 1.0
        return result

    monkeypatch.setattr(dist, "all_reduce", corrupting_all_reduce)
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "GLOO_SOCKET_IFNAME": "lo",
    }.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "rank0.json"
    rc = allreduce_worker.main(
        [
            "--backend",
            "gloo",
            "--min-bytes",
            "1024",
            "--max-bytes",
            "2048",
            "--min-time",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    first, second = json.loads(out.read_text())["results"]
    assert first["correct"] is False and first["algbw_gbps"] is None and first["busbw_gbps"] is None
    assert second["correct"] is True and second["busbw_gbps"] == 0.0  # one rank moves nothing over a bus
