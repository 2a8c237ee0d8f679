"""Throttle decisions from NVML samples, via the nvidia-ml-py test double."""

from __future__ import annotations

import dataclasses
import time

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


def test_thermal_and_power_bits_mark_a_run_throttled():
    throttled, why = throttle_verdict(_samples(fake_nvml.throttling()))
    assert throttled is True
    text = " ".join(why)
    assert "sw_power_cap" in text and "hw_thermal_slowdown" in text
    assert "1095 MHz" in text  # 1095 < 0.75 x 1980 as well


def test_a_low_clock_alone_marks_throttled_and_the_threshold_is_75_percent():
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
