"""Doctor's fabric probe: NVSwitch fabric per GPU, Fabric Manager, NVLink, PCIe replays.

NVML is the fabric double (tests/fakes/fake_fabric.py, shaped on nvidia-ml-py); the
host is a fake sysfs tree with NVSwitch PCI devices; `systemctl` is a stand-in program
on PATH that answers `is-active` like systemd does.
"""

from __future__ import annotations

import inspect
import json
import stat
from pathlib import Path

import jsonschema
import pynvml
import pytest

from envkit.doctor.model import schema_path
from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.fabric import nvswitch_pci_devices, probe_fabric
from envkit.doctor.runner import run_doctor
from tests.fakes import fake_fabric, fake_nvml
from tests.fakes.fake_host import make_host_tree

# NVSwitch gen3 (HGX H100) as lspci -n shows it: 10de:22a3, class 0680.
NVSWITCH_DEVICES = ("0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0")


@pytest.fixture(autouse=True)
def _no_container_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)


def host(tmp_path: Path, *, gpus: int = 8, nvswitches: int = 4, systemd: bool = True) -> Path:
    root = make_host_tree(tmp_path / "root", gpus=gpus, driver="580.82.07", open_module=True)
    pci = root / "sys/bus/pci/devices"
    for addr in NVSWITCH_DEVICES[:nvswitches]:
        dev = pci / addr
        dev.mkdir()
        (dev / "vendor").write_text("0x10de\n")
        (dev / "device").write_text("0x22a3\n")
        (dev / "class").write_text("0x068000\n")
    # A Mellanox ConnectX-7 is a network controller, never an NVSwitch.
    nic = pci / "0000:c1:00.0"
    nic.mkdir()
    (nic / "vendor").write_text("0x15b3\n")
    (nic / "class").write_text("0x020700\n")
    if systemd:
        (root / "run/systemd/system").mkdir(parents=True)
    return root


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a stand-in `systemctl` answering `is-active` with the given word."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))

    def install(word: str) -> None:
        rc = 0 if word == "active" else 3  # systemctl is-active: 3 for inactive/failed
        path = bindir / "systemctl"
        path.write_text(
            f'#!/bin/sh\n[ "$1 $2" = "is-active nvidia-fabricmanager" ] || exit 4\necho {word}\nexit {rc}\n'
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    return install


def run(nvml, root: Path) -> dict:
    result = probe_fabric(DoctorOptions(nvml=nvml, fs_root=root))
    checks = {c.name: c for c in result.checks}
    assert len(checks) == len(result.checks), "check names must be unique"
    checks["_facts"] = result.facts
    return checks


# --- the double matches nvidia-ml-py ------------------------------------------------


def test_fake_fabric_matches_real_nvml_signatures() -> None:
    names = [n for n in vars(fake_fabric.FakeFabricNvml) if n.startswith("nvml")]
    assert len(names) == 6
    for name in names:
        real = getattr(pynvml, name)
        assert inspect.signature(getattr(fake_fabric.FakeFabricNvml(), name)) == inspect.signature(real), name


def test_fake_fabric_wants_the_struct_by_reference_and_versioned() -> None:
    import ctypes

    nvml = fake_fabric.hgx_h100_fabric_up()
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    info = pynvml.c_nvmlGpuFabricInfoV_t()
    with pytest.raises(pynvml.NVMLError) as exc:
        nvml.nvmlDeviceGetGpuFabricInfoV(h, info)  # not byref: the C API gets no pointer
    assert exc.value.value == pynvml.NVML_ERROR_INVALID_ARGUMENT
    nvml.nvmlDeviceGetGpuFabricInfoV(h, ctypes.byref(info))
    assert info.state == pynvml.NVML_GPU_FABRIC_STATE_COMPLETED and info.status == pynvml.NVML_SUCCESS
    with pytest.raises(pynvml.NVMLError) as exc:
        nvml.nvmlDeviceGetNvLinkState(h, 18)  # H100 SXM has links 0..17
    assert exc.value.value == pynvml.NVML_ERROR_INVALID_ARGUMENT


# --- scenarios -----------------------------------------------------------------------


def test_hgx_h100_with_the_fabric_up(tmp_path, systemctl) -> None:
    systemctl("active")
    root = host(tmp_path)
    assert nvswitch_pci_devices(DoctorOptions(fs_root=root)) == list(NVSWITCH_DEVICES)
    checks = run(fake_fabric.hgx_h100_fabric_up(), root)
    assert checks["fabricmanager"].status == "ok"
    assert "4 NVSwitch(es)" in checks["fabricmanager"].evidence
    for i in range(8):
        assert checks[f"gpu{i} fabric"].status == "ok"
        assert "fabric completed (status success)" in checks[f"gpu{i} fabric"].evidence
        assert checks[f"gpu{i} nvlink"].status == "ok"
        assert checks[f"gpu{i} nvlink"].evidence == "18/18 links active, no errors"
        assert checks[f"gpu{i} pcie replay"].status == "ok"
    assert checks["_facts"]["fabricmanager"] == "active"
    assert checks["_facts"]["nvswitch_count"] == 4


def test_fabric_manager_stopped_fails_with_the_start_fix(tmp_path, systemctl) -> None:
    systemctl("inactive")
    checks = run(fake_fabric.hgx_h100_fabricmanager_stopped(), host(tmp_path))
    fm = checks["fabricmanager"]
    assert fm.status == "fail"
    assert "inactive" in fm.evidence and "error 802" in fm.evidence
    assert "start nvidia-fabricmanager" in fm.hint
    gpu0 = checks["gpu0 fabric"]
    assert gpu0.status == "fail"
    assert gpu0.evidence.startswith("fabric not started")
    assert "start nvidia-fabricmanager" in gpu0.hint
    assert checks["gpu0 nvlink"].status == "fail"
    assert "all 18 NVLinks down" in checks["gpu0 nvlink"].evidence


def test_fabric_manager_failed_state_is_reported(tmp_path, systemctl) -> None:
    systemctl("failed")
    checks = run(fake_fabric.hgx_h100_fabric_in_progress(), host(tmp_path))
    assert checks["fabricmanager"].status == "fail"
    # training "in progress" with no Fabric Manager running will never finish
    assert checks["gpu0 fabric"].status == "fail"
    assert "nvidia-fabricmanager is failed" in checks["gpu0 fabric"].evidence


def test_fabric_in_progress_with_fabric_manager_running_warns(tmp_path, systemctl) -> None:
    systemctl("active")
    checks = run(fake_fabric.hgx_h100_fabric_in_progress(), host(tmp_path))
    assert checks["gpu0 fabric"].status == "warn"
    assert "check again in a minute" in checks["gpu0 fabric"].hint


def test_registration_failure_names_the_gpu_and_the_status(tmp_path, systemctl) -> None:
    systemctl("active")
    checks = run(fake_fabric.hgx_h100_registration_failed(), host(tmp_path))
    assert checks["gpu3 fabric"].status == "fail"
    assert "Unknown Error (999)" in checks["gpu3 fabric"].evidence
    assert all(checks[f"gpu{i} fabric"].status == "ok" for i in range(8) if i != 3)


def test_degraded_link_and_link_errors(tmp_path, systemctl) -> None:
    systemctl("active")
    checks = run(fake_fabric.hgx_h100_degraded_link(), host(tmp_path))
    fabric5, link5 = checks["gpu5 fabric"], checks["gpu5 nvlink"]
    assert fabric5.status == "warn" and "degraded bandwidth" in fabric5.evidence
    assert link5.status == "fail"  # a link down on an NVSwitch node
    assert "1 of 18 links down (link 7)" in link5.evidence
    assert "link 2 had to recover" in link5.evidence
    assert "48211 crc_flit" in link5.evidence
    assert link5.details["error_totals"]["replay"] == 9874
    assert checks["gpu4 nvlink"].status == "ok"


def test_pcie_replays_warn(tmp_path, systemctl) -> None:
    systemctl("active")
    checks = run(fake_fabric.hgx_h100_pcie_replays(), host(tmp_path))
    assert checks["gpu0 pcie replay"].status == "warn"
    assert "4312 PCIe replays" in checks["gpu0 pcie replay"].evidence
    assert checks["gpu1 pcie replay"].status == "ok"


def test_pcie_h100_has_no_fabric(tmp_path, systemctl) -> None:
    systemctl("inactive")  # not even asked: no NVSwitch here
    checks = run(fake_fabric.pcie_h100(), host(tmp_path, gpus=2, nvswitches=0))
    assert checks["fabricmanager"].status == "not_applicable"
    assert "no NVSwitch" in checks["fabricmanager"].evidence
    assert checks["fabric"].status == "not_applicable"
    assert "gpu0 fabric" not in checks
    assert checks["gpu0 nvlink"].status == "not_applicable"
    assert checks["gpu1 pcie replay"].status == "ok"


def test_a100_node_is_recognised_from_its_nvswitches(tmp_path, systemctl) -> None:
    systemctl("inactive")
    checks = run(fake_fabric.a100_old_driver(), host(tmp_path))
    # A100s report no fabric state: the NVSwitches on the PCI bus say Fabric Manager is needed.
    assert checks["fabricmanager"].status == "fail"
    assert checks["fabric"].status == "not_applicable"
    assert checks["gpu0 nvlink"].status == "ok"
    assert checks["gpu0 nvlink"].evidence.startswith("12/12 links active")


def test_no_systemd_is_not_applicable_with_the_reason(tmp_path, systemctl) -> None:
    systemctl("active")
    checks = run(fake_fabric.hgx_h100_fabric_up(), host(tmp_path, systemd=False))
    assert checks["fabricmanager"].status == "not_applicable"
    assert "systemd is not running" in checks["fabricmanager"].evidence
    assert checks["gpu0 fabric"].status == "ok"


def test_missing_systemctl_is_not_applicable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    checks = run(fake_fabric.hgx_h100_fabric_up(), host(tmp_path))
    assert checks["fabricmanager"].status == "not_applicable"
    assert "systemctl is not installed" in checks["fabricmanager"].evidence


def test_nvml_missing_leaves_the_finding_to_the_gpu_area(tmp_path, systemctl) -> None:
    systemctl("active")
    checks = run(fake_nvml.library_not_found(), host(tmp_path))
    assert checks["nvml"].status == "not_applicable"
    assert checks["fabricmanager"].status == "ok"  # still asked: the NVSwitches are on the bus


def test_a_lost_gpu_is_unreadable_not_a_crash(tmp_path, systemctl) -> None:
    systemctl("active")
    nvml = fake_fabric.hgx_h100_fabric_up()
    nvml.gpus[2].lost = True
    checks = run(nvml, host(tmp_path))
    assert checks["gpu2 fabric"].status == "not_applicable"
    assert "fell off the bus" in checks["gpu2 fabric"].evidence
    assert checks["gpu3 fabric"].status == "ok"


def test_plain_fake_gpus_answer_not_supported(tmp_path) -> None:
    checks = run(fake_nvml.eight_h100(), host(tmp_path, nvswitches=0))
    assert checks["fabric"].status == "not_applicable"
    assert checks["gpu7 nvlink"].status == "not_applicable"
    assert checks["gpu7 pcie replay"].status == "not_applicable"


@pytest.mark.parametrize("scenario", sorted(fake_fabric.SCENARIOS))
def test_every_scenario_gives_a_report_under_the_schema(scenario, tmp_path, systemctl) -> None:
    systemctl("inactive" if "stopped" in scenario else "active")
    root = host(tmp_path, nvswitches=0 if scenario == "pcie_h100" else 4)
    report = run_doctor(
        DoctorOptions(nvml=fake_fabric.SCENARIOS[scenario](), fs_root=root, only=frozenset({"fabric", "gpu"}))
    )
    doc = json.loads(json.dumps(report.to_dict()))
    jsonschema.Draft202012Validator(json.loads(schema_path().read_text())).validate(doc)
    assert not [c for c in report.checks if c.status == "error"], scenario
    failing = {"hgx_h100_fabricmanager_stopped", "hgx_h100_registration_failed", "hgx_h100_degraded_link"}
    expected_exit = 1 if scenario in failing else 0
    assert report.exit_code == expected_exit, [c.to_dict() for c in report.failing()]
