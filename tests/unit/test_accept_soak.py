"""The soak's verdict logic and its CPU path, with injected faults (a wrong product, a slow device)."""

from __future__ import annotations

import pytest

from envkit.accept.soak import (
    DeviceSoak,
    SoakFaults,
    judge_soak,
    plan_soak,
    run_soak,
    status_of,
)
from envkit.vocab import Status


def _device(name: str, windows: list[float], wrong: int = 0, iterations: int = 100) -> DeviceSoak:
    d = DeviceSoak(device=name, name="NVIDIA H100 80GB HBM3", dtype="bf16", shape=8192)
    d.windows_tflops = windows
    d.iterations = iterations
    d.wrong = wrong
    if wrong:
        d.max_rel_error, d.first_wrong_iteration = 0.4, 7
    return d


def test_eight_equal_gpus_pass() -> None:
    # an HGX node: eight GPUs within a few percent of each other (run-to-run spread of a healthy node)
    devices = [_device(f"gpu{i}", [640.0 + i, 655.0, 652.0 - i, 650.0, 651.0]) for i in range(8)]
    findings = judge_soak(devices, tolerance=0.10)
    assert findings == []
    assert status_of(findings) == Status.OK


def test_one_slow_gpu_fails_with_its_ratio() -> None:
    devices = [_device(f"gpu{i}", [650.0] * 5) for i in range(7)]
    devices.append(_device("gpu7", [500.0] * 5))  # 0.77x: a GPU at a lower power limit or a bad slot
    findings = judge_soak(devices, tolerance=0.10)
    assert [f.status for f in findings] == [Status.FAIL]
    assert "gpu7" in findings[0].message and "0.77x" in findings[0].message


def test_slow_within_tolerance_passes() -> None:
    devices = [_device("gpu0", [650.0] * 5), _device("gpu1", [600.0] * 5), _device("gpu2", [640.0] * 5)]
    assert judge_soak(devices, tolerance=0.10) == []


def test_wrong_products_fail_even_when_fast() -> None:
    devices = [_device("gpu0", [650.0] * 5), _device("gpu1", [650.0] * 5, wrong=3)]
    findings = judge_soak(devices, tolerance=0.10)
    assert status_of(findings) == Status.FAIL
    assert "gpu1: 3 of 100 products wrong" in findings[0].message


def test_decay_over_the_soak_warns() -> None:
    # clocks sliding as the node heats up: the last third well below the first
    windows = [600.0, 650.0, 648.0, 645.0, 600.0, 560.0, 540.0, 530.0, 525.0, 520.0]
    findings = judge_soak([_device("gpu0", windows)], tolerance=0.10)
    assert [f.status for f in findings] == [Status.WARN]
    assert "decayed" in findings[0].message


def test_a_slow_first_window_is_not_decay() -> None:
    # window 0 holds ramp-up; a steady soak afterwards must not warn
    assert judge_soak([_device("gpu0", [300.0, 650.0, 651.0, 649.0, 650.0, 652.0])], 0.10) == []


def test_problem_clock_reasons_fail_but_power_cap_does_not_appear() -> None:
    devices = [_device("gpu0", [650.0] * 5), _device("gpu1", [650.0] * 5)]
    findings = judge_soak(devices, 0.10, slowdowns={"gpu0": [], "gpu1": ["hw_thermal_slowdown"]})
    assert [f.status for f in findings] == [Status.FAIL]
    assert "gpu1" in findings[0].message and "hw_thermal_slowdown" in findings[0].message


def test_faults_parse() -> None:
    faults = SoakFaults.parse("wrong=0;slow=1:0.5,2:1")
    assert faults.wrong == frozenset({0})
    assert faults.slow == {1: 0.5, 2: 1.0}
    assert SoakFaults.parse(None) == SoakFaults()
    with pytest.raises(ValueError, match="unknown fault"):
        SoakFaults.parse("melt=1")


def test_cpu_soak_checks_every_product_and_is_correct() -> None:
    plan = plan_soak("cpu", cpu_workers=1, shape=128)
    devices = run_soak(plan, duration_s=1.5, window_s=0.5)
    (cpu,) = devices
    assert cpu.iterations > 0
    assert cpu.wrong == 0
    assert 0 < cpu.max_rel_error < 1e-5  # a real fp32 product differs from float64 by rounding only
    assert cpu.windows_tflops and all(t > 0 for t in cpu.windows_tflops)


def test_cpu_soak_catches_an_injected_wrong_product() -> None:
    plan = plan_soak("cpu", cpu_workers=2, shape=128)
    devices = run_soak(plan, duration_s=1.5, window_s=0.5, faults=SoakFaults(wrong=frozenset({1})))
    by_name = {d.device: d for d in devices}
    assert by_name["cpu0"].wrong == 0
    assert by_name["cpu1"].wrong == by_name["cpu1"].iterations > 0
    findings = judge_soak(devices, tolerance=0.5)
    assert status_of(findings) == Status.FAIL
    assert any("cpu1" in f.message and "wrong" in f.message for f in findings)


def test_cpu_soak_catches_an_injected_slow_device() -> None:
    # cpu1 sleeps three times its own iteration time: it runs at about 1/4 of cpu0's speed
    plan = plan_soak("cpu", cpu_workers=2, shape=160)
    devices = run_soak(plan, duration_s=3.0, window_s=0.5, faults=SoakFaults(slow={1: 3.0}))
    findings = judge_soak(devices, tolerance=0.30)
    slow = [f for f in findings if f.status == Status.FAIL]
    assert slow and "cpu1" in slow[0].message and "slower than its siblings" in slow[0].message
