"""The arithmetic behind every bench figure: FLOPs, statistics, efficiency, bus bandwidth."""

from __future__ import annotations

import math

import pytest

from envkit.bench.stats import (
    allreduce_bandwidth,
    busbw_factor,
    efficiency,
    geometric_mean,
    matmul_flops,
    rate_stats,
    tflops,
    timing_stats,
)


def test_matmul_flops_counts_a_multiply_and_an_add_per_term():
    assert matmul_flops(2, 3, 4) == 48
    # the square 4096 product mamf-finder users quote: 137.4 GFLOP
    assert matmul_flops(4096, 4096, 4096) == 137_438_953_472


def test_tflops_of_a_known_product():
    # 8192^3 in 1.25 ms is 879.6 TFLOP/s (an H100/H200-class bf16 figure)
    assert tflops(matmul_flops(8192, 8192, 8192), 1.25e-3) == pytest.approx(879.609, rel=1e-6)
    with pytest.raises(ValueError):
        tflops(1.0, 0.0)


def test_timing_stats_and_spread():
    stats = timing_stats([0.004, 0.001, 0.002, 0.003])
    assert (stats.min, stats.max, stats.n) == (0.001, 0.004, 4)
    assert stats.median == pytest.approx(0.0025)
    assert stats.mean == pytest.approx(0.0025)
    assert stats.spread_pct == pytest.approx(120.0)
    assert stats.to_dict()["spread_pct"] == pytest.approx(120.0)
    assert timing_stats([0.5]).stdev == 0.0


@pytest.mark.parametrize("bad", [[], [0.0, 1.0], [-1.0], [math.nan], [math.inf]])
def test_timing_stats_refuses_a_broken_timer(bad):
    with pytest.raises(ValueError):
        timing_stats(bad)


def test_rates_invert_times_so_the_fastest_call_gives_the_max():
    rates = rate_stats(100.0, timing_stats([1.0, 2.0, 4.0]))
    assert rates == {"max": 100.0, "median": 50.0, "mean": pytest.approx(100 / (7 / 3)), "min": 25.0}


def test_geometric_mean():
    assert geometric_mean([1.0, 4.0, 16.0]) == pytest.approx(4.0)
    assert geometric_mean([3.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        geometric_mean([])
    with pytest.raises(ValueError):
        geometric_mean([1.0, 0.0])


def test_efficiency_against_a_peak_or_none():
    assert efficiency(742.0, 989.4) == pytest.approx(0.74995, rel=1e-4)
    assert efficiency(1.0, None) is None
    assert efficiency(1.0, 0.0) is None


@pytest.mark.parametrize(("n", "factor"), [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75)])
def test_busbw_factor_is_nccl_tests_2_n_minus_1_over_n(n, factor):
    assert busbw_factor(n) == pytest.approx(factor)


def test_allreduce_bandwidth():
    algbw, busbw = allreduce_bandwidth(1_000_000_000, 0.01, 8)
    assert algbw == pytest.approx(100.0)
    assert busbw == pytest.approx(175.0)
    with pytest.raises(ValueError):
        busbw_factor(0)
