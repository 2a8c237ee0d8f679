"""Doctor's NVML and kernel-driver probes on the machines users have, through the NVML double."""

from __future__ import annotations

import pynvml
import pytest

from envkit.doctor.model import Check
from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.driver import parse_nvrm_version, probe_driver
from envkit.doctor.probes.gpu import probe_gpu
from envkit.doctor.runner import run_doctor
from tests.fakes import fake_nvml
from tests.fakes.fake_host import NVRM_OPEN, NVRM_PROPRIETARY, make_host_tree


@pytest.fixture(autouse=True)
def _no_container_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA base images set NVIDIA_VISIBLE_DEVICES; doctor reads it as "a GPU is expected".
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def gpu_run(nvml, tmp_path, **opts) -> dict[str, Check]:
    root = make_host_tree(tmp_path / "root", gpus=len(getattr(nvml, "gpus", [])))
    return by_name(probe_gpu(DoctorOptions(nvml=nvml, fs_root=root, **opts)).checks)


def test_healthy_h100(tmp_path) -> None:
    checks = gpu_run(fake_nvml.healthy_h100(), tmp_path)
    assert checks["nvml"].status == "ok"
    assert "driver 580.82.07" in checks["nvml"].evidence
    assert "CUDA driver API 13.0" in checks["nvml"].evidence
    assert "NVIDIA H100 80GB HBM3" in checks["nvml"].evidence
    gpu0 = checks["gpu0"]
    assert gpu0.status == "ok"
    assert "sm_90" in gpu0.evidence and "81559 MiB" in gpu0.evidence
    assert gpu0.details["uuid"].startswith("GPU-")
    for aspect in ("ecc", "pcie", "clocks", "mig"):
        assert checks[f"gpu0 {aspect}"].status == "ok", checks[f"gpu0 {aspect}"]
    assert "Gen5 x16" in checks["gpu0 pcie"].evidence
    assert "idle" in checks["gpu0 clocks"].evidence


def test_eight_h100_node_reports_every_gpu(tmp_path) -> None:
    root = make_host_tree(tmp_path / "root", gpus=8, driver="580.82.07")
    opts = DoctorOptions(nvml=fake_nvml.eight_h100(), fs_root=root, only=frozenset({"gpu", "driver"}))
    report = run_doctor(opts)
    names = [c.name for c in report.checks if c.area == "gpu" and " " not in c.name]
    assert names == ["nvml"] + [f"gpu{i}" for i in range(8)]
    assert report.facts["gpu_count"] == 8
    assert report.exit_code == 0
    assert report.verdict().startswith("usable (8 GPU(s))")
    assert "8 GPU node(s)" in by_name(report.checks)["device nodes"].evidence


def test_driver_library_mismatch_fails_with_reload_hint(tmp_path) -> None:
    root = make_host_tree(tmp_path / "root", gpus=1, driver="580.95.05")
    opts = DoctorOptions(nvml=fake_nvml.driver_library_mismatch(), fs_root=root, only=frozenset({"gpu"}))
    report = run_doctor(opts)
    nvml = by_name(report.checks)["nvml"]
    assert nvml.status == "fail"
    assert "mismatch" in nvml.evidence
    assert "reload the nvidia module" in nvml.hint and "reboot" in nvml.hint
    assert report.exit_code == 1
    assert "gpu/nvml" in report.verdict()


def test_library_not_found_is_not_present_and_fails_only_when_required(tmp_path) -> None:
    checks = gpu_run(fake_nvml.library_not_found(), tmp_path)
    assert checks["nvml"].status == "not_present"
    assert "required gpu" not in checks

    checks = gpu_run(fake_nvml.library_not_found(), tmp_path / "again", require_gpu=True)
    assert checks["nvml"].status == "not_present"
    assert checks["required gpu"].status == "fail"
    assert "--gpus all" in checks["required gpu"].hint


def test_driver_not_loaded_fails_on_a_gpu_machine_only(tmp_path) -> None:
    gpu_host = make_host_tree(tmp_path / "gpu", gpus=2)
    checks = by_name(probe_gpu(DoctorOptions(nvml=fake_nvml.driver_not_loaded(), fs_root=gpu_host)).checks)
    assert checks["nvml"].status == "fail"
    assert "modprobe nvidia" in checks["nvml"].hint

    cpu_host = make_host_tree(tmp_path / "cpu", gpus=0)
    checks = by_name(probe_gpu(DoctorOptions(nvml=fake_nvml.driver_not_loaded(), fs_root=cpu_host)).checks)
    assert checks["nvml"].status == "warn"


def test_no_permission_warns(tmp_path) -> None:
    checks = gpu_run(fake_nvml.no_permission(), tmp_path)
    assert checks["nvml"].status == "warn"
    assert "/dev/nvidia" in checks["nvml"].hint


def test_throttling_names_the_reasons_and_the_clock(tmp_path) -> None:
    clocks = gpu_run(fake_nvml.throttling(), tmp_path)["gpu0 clocks"]
    assert clocks.status == "warn"
    for words in (
        "throttled: sw_thermal_slowdown, hw_thermal_slowdown",
        "sw_power_cap",
        "SM 1095/1980 MHz (55% of max)",
        "698/700 W (100% of limit)",
        "89 C",
    ):
        assert words in clocks.evidence
    assert "cooling" in clocks.hint
    assert clocks.details["throttle_reasons"] == [
        "sw_power_cap",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
    ]


def test_a_hot_gpu_warns_about_cooling(tmp_path) -> None:
    clocks = gpu_run(fake_nvml.hot_h100(), tmp_path)["gpu0 clocks"]
    assert clocks.status == "warn"
    assert clocks.details["state"] == "throttled: sw_thermal_slowdown, hw_thermal_slowdown"
    assert "cooling" in clocks.hint


def test_a_busy_gpu_at_its_power_limit_is_healthy(tmp_path) -> None:
    # An H100 running a large GEMM sits at 700 W with SwPowerCap set and ~85% clocks:
    # nvml.h calls SwPowerCap the power-scaling algorithm at work, not a fault.
    checks = gpu_run(fake_nvml.busy_h100_at_power_limit(), tmp_path)
    clocks = checks["gpu0 clocks"]
    assert clocks.status == "ok", clocks
    assert "power-limited (expected under load)" in clocks.evidence
    assert "SM 1680/1980 MHz (85% of max)" in clocks.evidence
    assert "699/700 W (100% of limit)" in clocks.evidence
    assert all(c.status == "ok" for c in checks.values()), checks


@pytest.mark.parametrize(
    "bit",
    [
        pynvml.nvmlClocksEventReasonSyncBoost,
        pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
        pynvml.nvmlClocksEventReasonGpuIdle,
    ],
)
def test_expected_clock_events_do_not_warn(tmp_path, bit) -> None:
    nvml = fake_nvml.FakeNvml([fake_nvml.FakeGpu(clocks_event_reasons=bit, sm_clock_mhz=1500)])
    assert gpu_run(nvml, tmp_path)["gpu0 clocks"].status == "ok"


def test_power_brake_warns_about_the_power_supply(tmp_path) -> None:
    nvml = fake_nvml.FakeNvml(
        [
            fake_nvml.FakeGpu(
                clocks_event_reasons=pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
                | pynvml.nvmlClocksEventReasonHwSlowdown,
                sm_clock_mhz=900,
            )
        ]
    )
    clocks = gpu_run(nvml, tmp_path)["gpu0 clocks"]
    assert clocks.status == "warn"
    assert "hw_power_brake_slowdown" in clocks.evidence
    assert "PSU" in clocks.hint and "cooling" not in clocks.hint


def test_power_limit_lowered_below_default_warns(tmp_path) -> None:
    nvml = fake_nvml.FakeNvml([fake_nvml.FakeGpu(power_limit_mw=400_000)])
    clocks = gpu_run(nvml, tmp_path)["gpu0 clocks"]
    assert clocks.status == "warn"
    assert "400 W is below the default 700 W" in clocks.evidence
    assert "nvidia-smi -i 0 -pl 700" in clocks.hint


def test_pcie_link_trained_down(tmp_path) -> None:
    pcie = gpu_run(fake_nvml.pcie_downtrained(), tmp_path)["gpu0 pcie"]
    assert pcie.status == "warn"
    assert "Gen3 x8 (max Gen5 x16)" in pcie.evidence
    assert "reseat" in pcie.hint


def test_idle_gpu_with_a_lower_link_generation_is_fine(tmp_path) -> None:
    nvml = fake_nvml.FakeNvml([fake_nvml.FakeGpu(pcie_gen_current=1)])  # idle, full width
    pcie = gpu_run(nvml, tmp_path)["gpu0 pcie"]
    assert pcie.status == "ok"
    assert "idle" in pcie.evidence


def test_uncorrected_ecc_and_pending_row_remap_fail(tmp_path) -> None:
    ecc = gpu_run(fake_nvml.ecc_errors(), tmp_path)["gpu0 ecc"]
    assert ecc.status == "fail"
    assert "3 uncorrectable ECC error(s) since boot" in ecc.evidence
    assert "row remap is pending" in ecc.evidence
    assert "drain" in ecc.hint and "nvidia-smi -r" in ecc.hint
    assert ecc.details["remapped_rows"] == [2, 3, 1, 0]


def test_failed_row_remapping_asks_for_rma(tmp_path) -> None:
    nvml = fake_nvml.FakeNvml([fake_nvml.FakeGpu(remapped_rows=(0, 8, 0, 1))])
    ecc = gpu_run(nvml, tmp_path)["gpu0 ecc"]
    assert ecc.status == "fail"
    assert "RMA" in ecc.hint


def test_retired_pages_on_a_v100(tmp_path) -> None:
    checks = gpu_run(fake_nvml.retired_pages(), tmp_path)
    ecc = checks["gpu0 ecc"]
    assert ecc.status == "warn"
    assert "3 page(s) retired" in ecc.evidence
    assert "page retirement pending" in ecc.evidence
    assert "reboot" in ecc.hint
    assert checks["gpu0 mig"].status == "not_applicable"  # V100 has no MIG


def test_mig_enabled_warns_with_the_way_out(tmp_path) -> None:
    mig = gpu_run(fake_nvml.mig_enabled(), tmp_path)["gpu0 mig"]
    assert mig.status == "warn"
    assert "MIG enabled" in mig.evidence
    assert "-mig 0" in mig.hint and "MIG-<uuid>" in mig.hint


def test_gpu_lost_mid_query_fails_instead_of_raising(tmp_path) -> None:
    nvml = fake_nvml.healthy_h100()

    def lost(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    nvml.nvmlDeviceGetName = lost
    checks = gpu_run(nvml, tmp_path)
    assert checks["nvml"].status == "fail"
    assert "Xid" in checks["nvml"].hint
    assert nvml.initialized == 0  # the session still shut NVML down


@pytest.mark.parametrize(
    ("scenario", "status"),
    [
        ("gpu_lost", "fail"),
        ("driver_library_mismatch", "fail"),
        ("library_not_found", "not_present"),
        ("driver_not_loaded", "fail"),  # a GPU is on the bus here
    ],
)
def test_broken_gpu_stacks_are_reported_not_raised(tmp_path, scenario, status) -> None:
    nvml = fake_nvml.SCENARIOS[scenario]()
    root = make_host_tree(tmp_path / "root", gpus=1)
    report = run_doctor(DoctorOptions(nvml=nvml, fs_root=root, only=frozenset({"gpu"})))
    checks = by_name(report.checks)
    assert checks["nvml"].status == status
    assert checks["nvml"].hint
    assert nvml.initialized == 0


# --- kernel driver -------------------------------------------------------------


def test_nvrm_banner_parses_for_both_module_flavours() -> None:
    assert parse_nvrm_version(NVRM_PROPRIETARY.format(v="535.183.01")) == "535.183.01"
    assert parse_nvrm_version(NVRM_OPEN.format(v="580.82.07")) == "580.82.07"
    assert parse_nvrm_version("") is None


def test_loaded_driver_with_its_nodes(tmp_path) -> None:
    root = make_host_tree(tmp_path, gpus=2, driver="580.82.07", open_module=True)
    result = probe_driver(DoctorOptions(fs_root=root))
    checks = by_name(result.checks)
    assert checks["kernel module"].status == "ok"
    assert "580.82.07 (open kernel module)" in checks["kernel module"].evidence
    assert checks["device nodes"].status == "ok"
    assert result.facts["kernel_driver_version"] == "580.82.07"


def test_missing_nvidia_uvm_node_warns(tmp_path) -> None:
    root = make_host_tree(tmp_path, gpus=1, driver="580.82.07", nodes=["nvidiactl", "nvidia0"])
    nodes = by_name(probe_driver(DoctorOptions(fs_root=root)).checks)["device nodes"]
    assert nodes.status == "warn"
    assert "nvidia-uvm" in nodes.evidence and "modprobe nvidia-uvm" in nodes.hint


def test_gpu_on_the_bus_without_a_driver_fails(tmp_path) -> None:
    root = make_host_tree(tmp_path, gpus=1)
    module = by_name(probe_driver(DoctorOptions(fs_root=root)).checks)["kernel module"]
    assert module.status == "fail"
    assert "0000:18:00.0" in module.evidence


def test_cpu_only_machine_has_no_driver_to_blame(tmp_path) -> None:
    root = make_host_tree(tmp_path, gpus=0)
    checks = by_name(probe_driver(DoctorOptions(fs_root=root)).checks)
    assert checks["kernel module"].status == "not_present"
    assert checks["device nodes"].status == "not_applicable"


def test_wsl2_gpu_has_no_linux_module_to_blame(tmp_path) -> None:
    root = make_host_tree(tmp_path, gpus=0)
    (root / "dev" / "dxg").write_text("")
    checks = by_name(probe_driver(DoctorOptions(fs_root=root)).checks)
    assert checks["kernel module"].status == "not_applicable"
    assert "Windows" in checks["kernel module"].hint
