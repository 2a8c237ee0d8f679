"""One rank of `envkit bench allreduce`, started by torchrun (never imported by the CLI).

Each size is checked first (every rank contributes (rank+1)·pattern; the sum
must equal n(n+1)/2·pattern exactly), then timed as nccl-tests does: a few
warm-up calls, back-to-back calls between two synchronisations, the slowest
rank's time. Local rank 0 rewrites the result file atomically after every size, so an
interrupted sweep still leaves what it measured (across hosts, local rank 0 of
every host does, for that host's launcher).

Test-only: ENVKIT_TEST_HANG_RANK=<rank> makes that rank sleep forever after joining
the group (the others then block in their first all-reduce), which is how the tests
reproduce a hung rank for `envkit bench allreduce --timeout`. Nothing else reads it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from envkit.atomic import atomic_write_bytes
from envkit.bench.stats import allreduce_bandwidth

HANG_RANK_ENV = "ENVKIT_TEST_HANG_RANK"


def sizes_between(min_bytes: int, max_bytes: int) -> list[int]:
    """Powers of two from min to max bytes (nccl-tests' -f 2), rounded to whole float32 elements."""
    sizes, size = [], max(4, min_bytes)
    while size <= max_bytes:
        sizes.append(size // 4 * 4)
        size *= 2
    return sizes


def pattern(count: int, device: torch.device) -> torch.Tensor:
    # small integers: every partial sum is exact in float32, so the check can demand equality
    return (torch.arange(count, device=device, dtype=torch.int64) % 251 + 1).to(torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("gloo", "nccl"), required=True)
    parser.add_argument("--min-bytes", type=int, required=True)
    parser.add_argument("--max-bytes", type=int, required=True)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.backend == "nccl":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=dt.timedelta(minutes=5))
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=dt.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    if os.environ.get(HANG_RANK_ENV) == str(rank):
        while True:  # a hung rank, for the --timeout test (see the module docstring)
            time.sleep(3600)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results = []
    for nbytes in sizes_between(args.min_bytes, args.max_bytes):
        count = nbytes // 4
        base = pattern(count, device)
        data = base * (rank + 1)
        dist.all_reduce(data)
        sync()
        ok = torch.tensor(
            [1.0 if torch.equal(data, base * (world * (world + 1) / 2)) else 0.0], device=device
        )
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # correct only if every rank saw the right sum
        del base

        data.zero_()  # timing on zeros keeps repeated sums finite
        for _ in range(3):
            dist.all_reduce(data)
        sync()
        start = time.perf_counter()
        dist.all_reduce(data)
        sync()
        probe = time.perf_counter() - start
        iters = torch.tensor(
            [float(min(200, max(5, math.ceil(args.min_time / max(probe, 1e-6)))))], device=device
        )
        dist.all_reduce(iters, op=dist.ReduceOp.MAX)  # every rank must make the same number of calls

        dist.barrier()
        sync()
        start = time.perf_counter()
        for _ in range(int(iters.item())):
            dist.all_reduce(data)
        sync()
        elapsed = torch.tensor([(time.perf_counter() - start) / int(iters.item())], device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the collective is as fast as its slowest rank
        seconds = float(elapsed.item())
        algbw, busbw = allreduce_bandwidth(nbytes, seconds, world)
        correct = bool(ok.item() == 1.0)
        results.append(
            {
                "bytes": nbytes,
                "dtype": "fp32",
                "iterations": int(iters.item()),
                "seconds": seconds,
                "algbw_gbps": algbw if correct else None,
                "busbw_gbps": busbw if correct else None,
                "correct": correct,
                "world_size": world,
            }
        )
        del data
        # Every rank holds the same reduced figures: the first rank of each host writes them,
        # so each host's `envkit bench allreduce` reports (one launch per host across hosts).
        if local_rank == 0:
            print(f"allreduce {nbytes} B: {algbw:.3f} GB/s algbw, correct={correct}", flush=True)
            payload = {
                "backend": args.backend,
                "world_size": world,
                "device": device.type,
                "results": results,
            }
            atomic_write_bytes(args.out, (json.dumps(payload) + "\n").encode())
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
