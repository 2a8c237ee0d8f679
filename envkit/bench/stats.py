"""The arithmetic of a benchmark: FLOPs, timing statistics, efficiency, bus bandwidth."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of one (m x k) @ (k x n) product: a multiply and an add per term, 2·M·N·K."""
    return 2 * m * n * k


def tflops(flops: float, seconds: float) -> float:
    """FLOP/s in units of 10^12."""
    if seconds <= 0:
        raise ValueError(f"a timed call must take positive time, got {seconds!r} s")
    return flops / seconds / 1e12


@dataclass(frozen=True)
class TimingStats:
    """Seconds per call over the timed repetitions of one measurement."""

    n: int
    min: float
    median: float
    mean: float
    max: float
    stdev: float

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how far apart the fastest and slowest calls were."""
        return 100.0 * (self.max - self.min) / self.median

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "spread_pct": self.spread_pct}


def timing_stats(seconds: Sequence[float]) -> TimingStats:
    """Summarise per-call times; refuses empty or non-positive samples (a broken timer)."""
    if not seconds:
        raise ValueError("no timed calls to summarise")
    if any(not math.isfinite(s) or s <= 0 for s in seconds):
        raise ValueError(f"timed calls must be finite and positive, got {list(seconds)!r}")
    values = sorted(float(s) for s in seconds)
    return TimingStats(
        n=len(values),
        min=values[0],
        median=statistics.median(values),
        mean=statistics.fmean(values),
        max=values[-1],
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def rate_stats(work: float, stats: TimingStats) -> dict[str, float]:
    """Throughput (work per second) for each statistic; the fastest call gives the highest rate."""
    return {
        "max": work / stats.min,
        "median": work / stats.median,
        "mean": work / stats.mean,
        "min": work / stats.max,
    }


def call_rate_stats(work: float, seconds: Sequence[float]) -> dict[str, float]:
    """max/median/mean/min of the per-call rates work/t, the statistics mamf-finder prints.

    The mean is the mean of the per-call rates (not work over the mean time, which is a
    harmonic mean and sits below it); median and max equal work/median(t) and work/min(t).
    """
    stats = timing_stats(seconds)  # validates: non-empty, finite, positive
    rates = sorted(work / float(t) for t in seconds)
    return {
        "max": rates[-1],
        "median": work / stats.median,
        "mean": statistics.fmean(rates),
        "min": rates[0],
    }


def geometric_mean(values: Iterable[float]) -> float:
    """Geometric mean of positive values (mamf-finder's summary across shapes)."""
    vals = list(values)
    if not vals:
        raise ValueError("geometric mean of nothing")
    if any(v <= 0 for v in vals):
        raise ValueError(f"geometric mean needs positive values, got {vals!r}")
    return math.exp(math.fsum(math.log(v) for v in vals) / len(vals))


def efficiency(achieved_tflops: float, peak_tflops: float | None) -> float | None:
    """Achieved / peak as a fraction, or None when no honest peak is known."""
    if peak_tflops is None or peak_tflops <= 0:
        return None
    return achieved_tflops / peak_tflops


def busbw_factor(world_size: int) -> float:
    """nccl-tests' all-reduce bus-bandwidth factor 2(n-1)/n: what each link carries."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    return 2.0 * (world_size - 1) / world_size


def allreduce_bandwidth(nbytes: int, seconds: float, world_size: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (10^9 B/s) for one all-reduce of `nbytes` taking `seconds`."""
    if seconds <= 0:
        raise ValueError(f"an all-reduce must take positive time, got {seconds!r} s")
    algbw = nbytes / seconds / 1e9
    return algbw, algbw * busbw_factor(world_size)
