"""Doctor's Xid probe on real-looking kernel logs, read through stand-in journalctl/dmesg programs.

The programs are tiny shell scripts on PATH that print a fixture from tests/data/xid/
(or fail the way the real tools fail in a container), so the probe's real path runs:
envkit.process.run_process, the journal-then-dmesg fallback, parsing, decoding.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import jsonschema
import pytest

from envkit.doctor.model import schema_path
from envkit.doctor.options import DoctorOptions
from envkit.doctor.probes.xid import (
    XID_CATALOGUE,
    KernelLog,
    decode,
    normalize_bus,
    parse_xid_lines,
    probe_xid,
    xid_checks,
)
from envkit.doctor.runner import run_doctor
from tests.fakes import fake_fabric, fake_nvml

DATA = Path(__file__).resolve().parents[1] / "data" / "xid"


def fixture_lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bindir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-in tools (absent ones are 'not installed')."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


def opts(nvml=None, **kw) -> DoctorOptions:
    return DoctorOptions(nvml=nvml if nvml is not None else fake_nvml.library_not_found(), **kw)


# --- parsing -------------------------------------------------------------------


def test_parses_journal_lines_with_bus_pid_and_name() -> None:
    events = parse_xid_lines(fixture_lines("journal_xid79.log"))
    assert [e.xid for e in events] == [79, 45, 45]
    first = events[0]
    assert first.bus == "0000:5d:00"
    assert first.pid == "<unknown>" and first.process == "<unknown>"
    assert first.text == "GPU has fallen off the bus."
    assert events[1].pid == "48211" and events[1].process == "pt_main_thread"


def test_parses_old_format_without_pci_prefix_or_pid() -> None:
    events = parse_xid_lines(fixture_lines("dmesg_rotated_mixed.log"))
    assert [(e.bus, e.xid) for e in events] == [("0000:3b:00", x) for x in (31, 119, 154, 999)]
    assert events[0].pid is None and events[0].text.startswith("Ch 0000000b")
    assert "GPU Reset Required" in events[2].text


def test_lines_without_xid_are_ignored() -> None:
    assert parse_xid_lines(fixture_lines("dmesg_clean.log")) == []
    assert parse_xid_lines(["NVRM: GPU 0000:5d:00.0: GPU has fallen off the bus."]) == []


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("00000000:3B:00.0", "0000:3b:00"), ("0000:3b:00", "0000:3b:00"), ("0001:AB:01.0", "0001:ab:01")],
)
def test_bus_ids_of_nvml_and_nvrm_normalise_alike(raw: str, norm: str) -> None:
    assert normalize_bus(raw) == norm


def test_every_xid_the_issue_names_is_decoded_with_a_fix() -> None:
    for xid in (13, 31, 43, 45, 48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120):
        info = XID_CATALOGUE[xid]
        assert info.meaning and info.fix, xid
    assert decode(79).status == "fail" and "fallen off the bus" in decode(79).meaning
    assert decode(48).status == "fail" and "double-bit" in decode(48).meaning
    assert decode(13).status == "warn"  # usually the application
    assert decode(45).status == "ok"  # a killed process, harmless alone
    assert decode(12345).status == "warn" and "catalogue" in decode(12345).fix


# --- judging ---------------------------------------------------------------------


def test_xid79_fails_the_gpu_it_names_by_nvml_index() -> None:
    log = KernelLog("journal", fixture_lines("journal_xid79.log"))
    bus_map = {normalize_bus(f"0000:{b}:00"): i for i, b in enumerate(fake_fabric.HGX_BUS_IDS)}
    checks = by_name(xid_checks(log, bus_map))
    gpu3 = checks["gpu3 xid"]
    assert gpu3.status == "fail"
    assert "Xid 79: GPU has fallen off the bus" in gpu3.evidence
    assert "Xid 45 x2" in gpu3.evidence
    assert "reboot" in gpu3.hint and "Xid 45" not in gpu3.hint  # benign ones give no fix
    assert gpu3.details["xids"]["79"]["count"] == 1
    assert checks["kernel log"].status == "ok"
    assert "3 Xid event(s) on 1 GPU(s)" in checks["kernel log"].evidence


# --- the probe through stand-in tools ---------------------------------------------


def test_journal_is_read_first(bindir: Path) -> None:
    tool(bindir, "journalctl", f"/bin/cat {DATA / 'journal_xid79.log'}")
    tool(bindir, "dmesg", "echo 'dmesg must not be read' >&2; exit 1")
    result = probe_xid(opts(fake_fabric.hgx_h100_fabric_up()))
    checks = by_name(result.checks)
    assert result.facts["source"] == "journal"
    assert checks["gpu3 xid"].status == "fail"
    assert result.facts["by_gpu"] == {"0000:5d:00": [45, 79]}


def test_dmesg_when_journalctl_is_missing(bindir: Path) -> None:
    tool(bindir, "dmesg", f"/bin/cat {DATA / 'dmesg_xid48.log'}")
    hgx = fake_fabric.hgx_h100_fabric_up()
    checks = by_name(probe_xid(opts(hgx)).checks)
    assert "(dmesg," in checks["kernel log"].evidence
    gpu0, gpu1 = checks["gpu0 xid"], checks["gpu1 xid"]
    assert gpu0.status == "fail"  # 48 DBE, with 63 and 94 alongside
    assert gpu0.evidence.index("Xid 48") < gpu0.evidence.index("Xid 94")  # worst first
    assert "RMA" in gpu0.hint
    assert gpu1.status == "warn"  # 13 + 43: an application fault
    assert "compute-sanitizer" in gpu1.hint


def test_journal_without_kernel_lines_falls_back_to_dmesg(bindir: Path) -> None:
    tool(bindir, "journalctl", "echo '-- No entries --'")
    tool(bindir, "dmesg", f"/bin/cat {DATA / 'dmesg_clean.log'}")
    checks = by_name(probe_xid(opts()).checks)
    assert list(checks) == ["kernel log"]
    assert checks["kernel log"].status == "ok"
    assert checks["kernel log"].evidence == "no Xid errors since boot (dmesg, 5 kernel lines)"


def test_unreadable_log_is_not_applicable_with_both_reasons(bindir: Path) -> None:
    tool(bindir, "journalctl", "echo 'No journal files were found.' >&2; exit 1")
    tool(bindir, "dmesg", "echo 'dmesg: read kernel buffer failed: Operation not permitted' >&2; exit 1")
    (check,) = probe_xid(opts()).checks
    assert check.status == "not_applicable"
    assert "No journal files were found" in check.evidence
    assert "Operation not permitted" in check.evidence
    assert "CAP_SYSLOG" in check.hint


def test_no_tools_at_all_is_not_applicable(bindir: Path) -> None:
    (check,) = probe_xid(opts()).checks
    assert check.status == "not_applicable"
    assert "journalctl not installed" in check.evidence and "dmesg not installed" in check.evidence


def test_a_hanging_journal_is_cut_off_and_dmesg_read(bindir: Path) -> None:
    tool(bindir, "journalctl", "exec /bin/sleep 60")
    tool(bindir, "dmesg", f"/bin/cat {DATA / 'dmesg_clean.log'}")
    result = probe_xid(opts(timeout_s=0.5))
    assert result.facts["source"] == "dmesg"


def test_rotated_ring_buffer_unknown_xid_and_gpu_unknown_to_nvml(bindir: Path) -> None:
    tool(bindir, "dmesg", f"/bin/cat {DATA / 'dmesg_rotated_mixed.log'}")
    checks = by_name(probe_xid(opts()).checks)  # NVML missing: GPUs named by bus id
    assert "no longer reaches back to boot" in checks["kernel log"].evidence
    gpu = checks["pci 0000:3b:00 xid"]
    assert gpu.status == "fail"  # 119 GSP timeout, 154 reset required
    assert "Xid 999: an Xid envkit does not decode" in gpu.evidence
    assert gpu.details["xids"]["999"]["known"] is False
    assert "GPU not visible to NVML" in gpu.evidence


def test_doctor_report_with_xids_follows_its_schema(bindir: Path, tmp_path: Path) -> None:
    tool(bindir, "dmesg", f"/bin/cat {DATA / 'dmesg_xid48.log'}")
    report = run_doctor(
        DoctorOptions(
            nvml=fake_fabric.hgx_h100_fabric_up(),
            fs_root=tmp_path,
            only=frozenset({"xid"}),
        )
    )
    doc = json.loads(json.dumps(report.to_dict()))
    jsonschema.Draft202012Validator(json.loads(schema_path().read_text())).validate(doc)
    assert report.exit_code == 1
    assert "xid/gpu0 xid" in report.verdict()
