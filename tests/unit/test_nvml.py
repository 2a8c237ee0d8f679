"""envkit.nvml over the NVML test double, and the double against real nvidia-ml-py."""

from __future__ import annotations

import inspect

import pynvml
import pytest

from envkit.nvml import (
    EXPECTED_BITS,
    PROBLEM_BITS,
    THROTTLE_BITS,
    NvmlUnavailable,
    clock_state,
    decode_throttle_reasons,
    is_problem,
    is_thermal_or_power,
    nvml_session,
    sample_gpu,
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


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def test_every_reason_bit_is_the_value_nvidia_ml_py_defines() -> None:
    # nvmlClocksThrottleReason* carries all eleven (BoardLimit/Reliability have no Event alias).
    for bit, name in THROTTLE_BITS:
        assert getattr(pynvml, f"nvmlClocksThrottleReason{_camel(name)}") == bit, name
        event = getattr(pynvml, f"nvmlClocksEventReason{_camel(name)}", None)
        assert event in (None, bit), name


def test_expected_and_problem_reasons_follow_nvml_h() -> None:
    expected = {
        pynvml.nvmlClocksEventReasonSwPowerCap,
        pynvml.nvmlClocksEventReasonSyncBoost,
        pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
        pynvml.nvmlClocksEventReasonGpuIdle,
    }
    problems = {
        pynvml.nvmlClocksEventReasonHwSlowdown,
        pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        pynvml.nvmlClocksEventReasonSwThermalSlowdown,
        pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    }
    for bit in expected:
        assert bit & EXPECTED_BITS and not is_problem(bit)
    for bit in problems:
        assert bit & PROBLEM_BITS and is_problem(bit)
    assert EXPECTED_BITS & PROBLEM_BITS == 0


def test_clock_state_reads_like_a_person_would() -> None:
    cap = pynvml.nvmlClocksEventReasonSwPowerCap
    assert clock_state(cap, 699.1, 700.0) == "power-limited (expected under load)"
    # at the limit with no bit set yet (sampled between power-scaling steps)
    assert clock_state(0, 690.0, 700.0) == "power-limited (expected under load)"
    assert clock_state(pynvml.nvmlClocksEventReasonGpuIdle, 71.0, 700.0) == "idle"
    hot = cap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert clock_state(hot, 700.0, 700.0) == "throttled: hw_thermal_slowdown"
    assert clock_state(0, 400.0, 700.0) == "no clock events"
    assert clock_state(None) == "clock-event reasons not reported"


def test_busy_h100_at_its_power_limit_reads_like_a_real_one() -> None:
    with nvml_session(fake_nvml.busy_h100_at_power_limit()) as nvml:
        (sample,) = sample_gpus(nvml)
    assert sample.throttle_reasons == ["sw_power_cap"]
    assert 0.80 <= sample.sm_clock_mhz / sample.max_sm_clock_mhz <= 0.90
    assert sample.power_w / sample.power_limit_w >= 0.99
    assert not sample.problem and sample.state == "power-limited (expected under load)"
    assert sample.to_dict()["problem"] is False


def test_cold_idle_and_hot_scenarios() -> None:
    with nvml_session(fake_nvml.healthy_h100()) as nvml:
        (idle,) = sample_gpus(nvml)
    assert idle.throttle_reasons == ["gpu_idle"] and idle.state == "idle"
    with nvml_session(fake_nvml.hot_h100()) as nvml:
        (hot,) = sample_gpus(nvml)
    assert hot.problem and hot.temperature_c >= 85
    assert set(hot.throttle_reasons) == {"sw_thermal_slowdown", "hw_thermal_slowdown"}


def test_a_lost_gpu_raises_the_real_gpu_is_lost_error() -> None:
    with nvml_session(fake_nvml.gpu_lost()) as nvml:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            sample_gpu(nvml, 0)
        assert nvml.nvmlDeviceGetCount() == 1  # NVML still counts it
