"""Throttle decisions from NVML samples, via the nvidia-ml-py test double."""

from __future__ import annotations

import dataclasses
import time

import pytest

from envkit.bench.telemetry import GpuSampler, nvml_index_for, nvml_inventory, summarise, throttle_verdict
from envkit.nvml import nvml_session, sample_gpus
from tests.fakes import fake_nvml


def _samples(nvml) -> list:
    with nvml_session(nvml) as mod:
        return sample_gpus(mod)


def _busy(**changes) -> fake_nvml.FakeNvml:
    busy = {"sm_clock_mhz": 1980, "clocks_event_reasons": 0, "power_mw": 650_000}
    gpu = dataclasses.replace(fake_nvml.FakeGpu(), **{**busy, **changes})
    return fake_nvml.FakeNvml([gpu])


def test_a_busy_gpu_at_full_clock_is_not_throttled():
    throttled, why = throttle_verdict(_samples(_busy()))
    assert throttled is False and why == []


def test_thermal_bits_mark_a_run_throttled_even_when_power_capped_too():
    throttled, why = throttle_verdict(_samples(fake_nvml.throttling()))
    assert throttled is True
    text = " ".join(why)
    assert "sw_thermal_slowdown" in text and "hw_thermal_slowdown" in text
    assert "sw_power_cap" not in text  # the expected reason is not what is wrong


def test_a_busy_h100_at_its_power_limit_is_not_throttled():
    # What every H100/H200 shows under a large GEMM: SwPowerCap, ~85% clocks, power ~= limit.
    summary = summarise(_samples(fake_nvml.busy_h100_at_power_limit()) * 5)
    assert summary.throttled is False and summary.throttled_because == []
    assert summary.clock_state == "power-limited (expected under load)"
    assert "SM 1680/1980 MHz (85% of max)" in summary.clock_evidence
    assert "699/700 W (100% of limit)" in summary.clock_evidence
    assert summary.throttle_reasons == ["sw_power_cap"]


def test_power_capped_clock_far_below_max_is_still_expected():
    # A power-heavy fp8 GEMM can pull an H100 to ~70% of its max clock at 700 W: still by design.
    capped = fake_nvml._real.nvmlClocksEventReasonSwPowerCap
    low = _busy(sm_clock_mhz=1380, clocks_event_reasons=capped, power_mw=700_000)
    throttled, _ = throttle_verdict(_samples(low))
    assert throttled is False


def test_a_hot_gpu_is_throttled():
    summary = summarise(_samples(fake_nvml.hot_h100()) * 3)
    assert summary.throttled is True and summary.clock_state == "throttled"
    assert "hw_thermal_slowdown" in " ".join(summary.throttled_because)


@pytest.mark.parametrize(
    "bit",
    [
        fake_nvml._real.nvmlClocksEventReasonHwSlowdown,
        fake_nvml._real.nvmlClocksEventReasonHwPowerBrakeSlowdown,
        fake_nvml._real.nvmlClocksEventReasonSwThermalSlowdown,
    ],
)
def test_each_problem_reason_alone_marks_throttled(bit):
    assert throttle_verdict(_samples(_busy(clocks_event_reasons=bit)))[0] is True


def test_a_low_clock_with_no_reason_marks_throttled_and_the_threshold_is_75_percent():
    low = int(0.74 * 1980)
    throttled, why = throttle_verdict(_samples(_busy(sm_clock_mhz=low)))
    assert throttled and "75%" in why[0]
    assert throttle_verdict(_samples(_busy(sm_clock_mhz=int(0.76 * 1980))))[0] is False


def test_idle_or_sync_boost_bits_alone_do_not_count_as_thermal_or_power():
    idle_bits = fake_nvml._real.nvmlClocksEventReasonGpuIdle | fake_nvml._real.nvmlClocksEventReasonSyncBoost
    assert throttle_verdict(_samples(_busy(clocks_event_reasons=idle_bits)))[0] is False


def test_summary_uses_the_median_clock_so_one_dip_does_not_flag_a_run():
    samples = _samples(_busy()) * 4 + _samples(_busy(sm_clock_mhz=600))
    summary = summarise(samples)
    assert summary.throttled is False
    assert summary.sm_clock_mhz == {"min": 600, "median": 1980, "max": 1980}
    assert summary.power_w == {"mean": 650.0, "max": 650.0}
    assert summary.max_sm_clock_mhz == 1980 and summary.power_limit_w == 700.0


def test_background_sampler_collects_and_reports_throttling():
    sampler = GpuSampler(0, interval_s=0.01, nvml=fake_nvml.throttling()).start()
    time.sleep(0.1)
    summary = sampler.stop()
    assert summary.available and summary.samples >= 2
    assert summary.throttled is True
    assert "sw_thermal_slowdown" in summary.throttle_reasons


def test_sampler_on_a_lost_gpu_reports_why_instead_of_failing():
    summary = GpuSampler(0, interval_s=0.01, nvml=fake_nvml.gpu_lost()).start().stop()
    assert summary.available is False and "fell off the bus" in summary.reason
    inventory, _, reason = nvml_inventory(fake_nvml.gpu_lost())
    assert inventory == [] and "GPU is lost" in reason


def test_sampler_without_nvml_reports_why_instead_of_failing():
    summary = GpuSampler(0, interval_s=0.01, nvml=fake_nvml.driver_not_loaded()).start().stop()
    assert summary.available is False and "driver not loaded" in summary.reason


def test_inventory_and_uuid_mapping():
    inventory, driver, reason = nvml_inventory(fake_nvml.eight_h100())
    assert len(inventory) == 8 and driver == "580.82.07" and reason is None
    uuid = inventory[5].uuid
    assert nvml_index_for(uuid, 0, inventory) == 5  # CUDA order may differ from NVML's
    assert nvml_index_for(uuid.removeprefix("GPU-"), 0, inventory) == 5
    assert nvml_index_for(None, 3, inventory) == 3
    assert nvml_index_for(None, 9, inventory) is None
    assert nvml_inventory(fake_nvml.library_not_found())[2]


def _rendered(nvml) -> str:
    from rich.console import Console

    from envkit.bench.render import matmul_notes, matmul_summary_table

    telemetry = summarise(_samples(nvml) * 3).to_dict()
    run = {
        "backend": "torch", "device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "bf16",
        "status": "ok", "message": None, "best": {"shape": "8192x8192x8192", "tflops": 720.0},
        "geomean_tflops": 600.0, "peak_tflops": 989.4, "peak_reason": None, "efficiency": 0.73,
        "throttled": telemetry["throttled"], "telemetry": telemetry, "shapes": [],
    }  # fmt: skip
    doc = {"results": [run], "summary": {"rows": []}}
    console = Console(width=200, record=True)
    console.print(matmul_summary_table(doc))
    for note in matmul_notes(doc):
        console.print(note)
    return console.export_text()


def test_bench_output_says_power_limited_not_throttled_for_a_busy_h100():
    text = _rendered(fake_nvml.busy_h100_at_power_limit())
    assert "no (power-limited)" in text and "yes" not in text
    assert "power-limited (expected under load), SM 1680/1980 MHz (85% of max)" in text
    hot = _rendered(fake_nvml.hot_h100())
    assert "yes" in hot and "hw_thermal_slowdown" in hot
