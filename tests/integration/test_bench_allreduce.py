"""A real 2-process torchrun all-reduce over gloo, and the host memory copy."""

from __future__ import annotations

import json

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


def _marked_processes(marker: str) -> dict[int, int]:
    """pid -> pgid of every live (non-zombie) process whose environment carries `marker`."""
    from pathlib import Path

    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if marker.encode() in environ.split(b"\0") and fields[0] != "Z":
            found[int(entry.name)] = int(fields[2])
    return found


@pytest.mark.slow
def test_a_hung_rank_is_killed_at_timeout_with_exit_1_and_nothing_survives(tmp_path):
    """Rank 1 sleeps forever (ENVKIT_TEST_HANG_RANK, the worker's test-only hook), so rank 0
    blocks in its first all-reduce: --timeout must kill torchrun and both ranks, exit 1, say why."""
    import os
    import subprocess
    import sys
    import time
    import uuid

    from envkit.bench.allreduce_worker import HANG_RANK_ENV
    from envkit.process import group_members

    marker = f"ENVKIT_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, HANG_RANK_ENV: "1", marker.split("=")[0]: marker.split("=")[1]}
    out = tmp_path / "r.json"
    args = ["bench", "allreduce", "--nproc", "2", "--backend", "gloo", "--max-size", "4KiB"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "envkit", *args, "--timeout", "30", "--json", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    groups: set[int] = set()
    ranks_seen = 0
    while proc.poll() is None:  # learn the torchrun group while it runs (launcher + 2 ranks)
        marked = {pid: pgid for pid, pgid in _marked_processes(marker).items() if pid != proc.pid}
        groups.update(marked.values())
        ranks_seen = max(ranks_seen, len(marked))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 1, stderr
    assert ranks_seen >= 3, "torchrun and its two ranks were never seen running"
    doc = json.loads(stdout)
    assert doc["summary"]["status"] == "error" and doc["summary"]["timed_out"] is True
    assert "did not finish within 30 s" in doc["summary"]["message"]
    assert json.loads(out.read_text())["summary"]["timed_out"] is True
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "did not finish within 30 s" in error_lines[0]
    assert "Traceback" not in stderr
    envkit_pgid = os.getpgid(os.getpid())
    for pgid in groups - {envkit_pgid}:
        assert group_members(pgid) == [], f"process group {pgid} outlived the timeout"
    assert [pid for pid in _marked_processes(marker) if pid != proc.pid] == []
