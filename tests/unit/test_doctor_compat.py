"""Compatibility verdicts from the version matrix, on the facts the probes gather."""

from __future__ import annotations

from envkit.doctor.compat import compat_checks
from envkit.doctor.model import Check
from envkit.matrix import load_matrix


def verdicts(facts) -> dict[str, Check]:
    return {c.name: c for c in compat_checks(facts).checks}


def torch_facts(cuda: str | None, driver: str | None, version: str = "2.13.0") -> dict:
    return {
        "gpu": {"driver_version": driver} if driver else {},
        "pytorch": {
            "version": f"{version}+cu{(cuda or '').replace('.', '')}" if cuda else version,
            "cuda": cuda,
        },
    }


def test_driver_too_old_for_the_framework_cuda_fails_naming_the_minimum() -> None:
    check = verdicts(torch_facts("13.0", "550.54.15"))["pytorch driver"]
    floor = load_matrix().driver_requirement("13.0").minor_compat_floor
    assert check.status == "fail"
    assert floor in check.evidence
    assert "install NVIDIA driver >=" in check.hint


def test_minor_version_compatibility_warns() -> None:
    # CUDA 12.8 ships with 570.x; 560 is above the 12.x floor (525.60.13) but below it.
    check = verdicts(torch_facts("12.8", "560.35.03", version="2.7.1"))["pytorch driver"]
    assert check.status == "warn"
    assert "minor-version compatibility" in check.evidence
    assert load_matrix().driver_requirement("12.8").toolkit_driver in check.hint


def test_new_enough_driver_is_ok() -> None:
    check = verdicts(torch_facts("13.0", "580.82.07"))["pytorch driver"]
    assert check.status == "ok"


def test_cpu_builds_need_no_driver() -> None:
    facts = {
        "pytorch": {"version": "2.13.0+cpu", "cuda": None},
        "tensorflow": {"version": "2.21.0", "cuda": None},
    }
    checks = verdicts(facts)
    assert checks["pytorch cuda"].status == "not_applicable"
    assert checks["tensorflow cuda"].status == "not_applicable"
    assert not any(c.status in ("warn", "fail") for c in checks.values())


def test_cuda_build_without_any_driver_is_not_applicable() -> None:
    check = verdicts(torch_facts("13.0", None))["pytorch driver"]
    assert check.status == "not_applicable"
    assert "no NVIDIA driver" in check.evidence


def test_kernel_driver_falls_back_when_nvml_is_missing() -> None:
    facts = {
        "driver": {"kernel_driver_version": "535.183.01"},
        "pytorch": {"version": "2.13.0", "cuda": "13.0"},
    }
    assert verdicts(facts)["pytorch driver"].status == "fail"


def test_unofficial_torch_cuda_pair_warns() -> None:
    checks = verdicts(torch_facts("12.1", "580.82.07"))
    assert checks["pytorch cuda"].status == "warn"
    assert "no official CUDA 12.1 build" in checks["pytorch cuda"].evidence


def test_tensorflow_cuda_differs_from_the_tested_one() -> None:
    facts = {"gpu": {"driver_version": "580.82.07"}, "tensorflow": {"version": "2.21.0", "cuda": "12.3"}}
    checks = verdicts(facts)
    assert checks["tensorflow driver"].status == "ok"
    assert checks["tensorflow cuda"].status == "warn"
    tested = load_matrix().tensorflow_cuda["2.21"]["cuda"]
    assert f"tested with CUDA {tested}" in checks["tensorflow cuda"].evidence


def test_toolkit_without_driver_is_reported_truthfully() -> None:
    check = verdicts({"cuda": {"nvcc_version": "13.0"}})["toolkit driver"]
    assert check.status == "not_applicable"
    assert "nvcc 13.0 can compile here" in check.evidence


def test_toolkit_major_differs_from_torch_cuda() -> None:
    facts = torch_facts("12.6", "580.82.07")
    facts["cuda"] = {"nvcc_version": "13.0"}
    checks = verdicts(facts)
    assert checks["toolkit driver"].status == "ok"
    assert checks["toolkit pytorch"].status == "warn"
    assert "cpp_extension" in checks["toolkit pytorch"].hint


def test_kernel_module_and_library_versions_differ() -> None:
    facts = {"driver": {"kernel_driver_version": "570.86.10"}, "gpu": {"driver_version": "580.82.07"}}
    check = verdicts(facts)["driver versions"]
    assert check.status == "fail"
    assert "reboot" in check.hint


def test_framework_that_sees_fewer_gpus_than_nvml_warns(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    facts = torch_facts("13.0", "580.82.07")
    facts["gpu"]["gpu_count"] = 8
    facts["pytorch"].update(gpu_build=True, gpus_seen=7)
    check = verdicts(facts)["pytorch gpus"]
    assert check.status == "warn"
    assert "sees 7 of the 8 GPU(s)" in check.evidence

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    facts["pytorch"]["gpus_seen"] = 2
    assert verdicts(facts)["pytorch gpus"].status == "ok"
