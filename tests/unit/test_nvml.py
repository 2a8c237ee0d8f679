"""envkit.nvml over the NVML test double, and the double against real nvidia-ml-py."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from envkit.nvml import (
    NvmlUnavailable,
    decode_throttle_reasons,
    is_thermal_or_power,
    nvml_session,
    sample_gpus,
)
from tests.fakes import fake_nvml


def test_fake_matches_real_nvml_signatures() -> None:
    fake = fake_nvml.FakeNvml()
    names = [n for n in dir(fake_nvml.FakeNvml) if n.startswith("nvml")]
    assert len(names) > 30
    for name in names:
        real = getattr(pynvml, name)  # AttributeError: the double invents an API
        assert inspect.signature(getattr(fake, name)) == inspect.signature(real), name


def test_fake_raises_the_real_error_classes() -> None:
    fake = fake_nvml.driver_library_mismatch()
    with pytest.raises(pynvml.NVMLError_LibRmVersionMismatch) as info:
        fake.nvmlInit()
    assert info.value.value == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH
    # Like the real library: queries before nvmlInit fail with UNINITIALIZED.
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake_nvml.healthy_h100().nvmlDeviceGetCount()


def test_throttle_bits_decode_by_name() -> None:
    mask = (
        pynvml.nvmlClocksEventReasonSwPowerCap
        | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        | pynvml.nvmlClocksEventReasonGpuIdle
    )
    assert decode_throttle_reasons(mask) == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown) == [
        "hw_power_brake_slowdown"
    ]
    assert decode_throttle_reasons(pynvml.nvmlClocksEventReasonDisplayClockSetting | 0x8000) == [
        "display_clock_setting",
        "unknown_0x8000",
    ]
    # Every reason nvidia-ml-py defines gets a name.
    assert "unknown" not in " ".join(decode_throttle_reasons(pynvml.nvmlClocksThrottleReasonAll))


def test_thermal_or_power_ignores_idle_and_app_clocks() -> None:
    assert not is_thermal_or_power(pynvml.nvmlClocksEventReasonGpuIdle)
    assert not is_thermal_or_power(
        pynvml.nvmlClocksEventReasonApplicationsClocksSetting | pynvml.nvmlClocksEventReasonSyncBoost
    )
    assert is_thermal_or_power(pynvml.nvmlClocksEventReasonSwThermalSlowdown)
    assert is_thermal_or_power(pynvml.nvmlClocksEventReasonSwPowerCap)
    assert is_thermal_or_power(pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown)


@pytest.mark.parametrize(
    ("scenario", "status", "hint_words"),
    [
        ("library_not_found", "not_present", "no NVIDIA driver"),
        ("driver_not_loaded", "fail", "modprobe nvidia"),
        ("driver_library_mismatch", "fail", "reload the nvidia module"),
        ("no_permission", "warn", "/dev/nvidia"),
    ],
)
def test_init_errors_map_to_doctor_statuses(scenario: str, status: str, hint_words: str) -> None:
    fake = fake_nvml.SCENARIOS[scenario]()
    with pytest.raises(NvmlUnavailable) as info, nvml_session(fake):
        pass
    assert info.value.status == status
    assert hint_words in info.value.hint


def test_real_pynvml_here_reports_not_present() -> None:
    try:
        with nvml_session():
            pytest.skip("this machine has a working NVIDIA driver")
    except NvmlUnavailable as exc:
        assert exc.status == "not_present"


def test_session_shuts_down_even_when_the_block_fails() -> None:
    fake = fake_nvml.healthy_h100()
    with pytest.raises(RuntimeError), nvml_session(fake):
        assert fake.initialized == 1
        raise RuntimeError("boom")
    assert fake.initialized == 0
    assert fake.calls[-1] == "nvmlShutdown"


def test_sample_gpus_reads_clocks_power_and_throttle() -> None:
    with nvml_session(fake_nvml.throttling()) as nvml:
        (sample,) = sample_gpus(nvml)
    assert sample.name == "NVIDIA H100 80GB HBM3"
    assert (sample.sm_clock_mhz, sample.max_sm_clock_mhz) == (1095, 1980)
    assert sample.power_w == 698.5 and sample.power_limit_w == 700.0
    assert sample.temperature_c == 89
    assert sample.throttle_reasons == ["sw_power_cap", "sw_thermal_slowdown", "hw_thermal_slowdown"]
    assert sample.thermal_or_power_limited
    assert sample.to_dict()["thermal_or_power_limited"] is True


def test_sample_gpus_covers_every_gpu_of_a_node() -> None:
    with nvml_session(fake_nvml.eight_h100()) as nvml:
        samples = sample_gpus(nvml)
    assert [s.index for s in samples] == list(range(8))
    assert len({s.uuid for s in samples}) == 8
    assert all(s.throttle_reasons == ["gpu_idle"] and not s.thermal_or_power_limited for s in samples)


def test_sample_falls_back_to_the_throttle_reason_call_on_old_drivers() -> None:
    fake = fake_nvml.throttling()

    def missing(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    fake.nvmlDeviceGetCurrentClocksEventReasons = missing
    with nvml_session(fake) as nvml:
        (sample,) = sample_gpus(nvml)
    assert "sw_power_cap" in sample.throttle_reasons
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in fake.calls
