"""`dcgmi diag -r <level> -j`: run NVIDIA DCGM's diagnostics and read its per-test results.

DCGM's JSON has changed shape between major versions: 3.x nests results as
"DCGM GPU Diagnostic" → "test_categories" → "tests" → "results" (one entry per
GPU, "gpu_ids" and a status PASS|FAIL|WARN|SKIPPED, optional "warnings"/"info");
4.x lifts "tests" to the top and names the entity of each result. The reader
walks the document structurally so both read the same, and a status word it does
not know counts as "not run" — never as a pass.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

from envkit.process import run_process
from envkit.vocab import Status

_STATUS = {
    "pass": Status.OK,
    "passed": Status.OK,
    "fail": Status.FAIL,
    "failed": Status.FAIL,
    "error": Status.FAIL,
    "warn": Status.WARN,
    "warning": Status.WARN,
    "skip": Status.NOT_APPLICABLE,
    "skipped": Status.NOT_APPLICABLE,
    "not applicable": Status.NOT_APPLICABLE,
}


@dataclass
class DiagTest:
    """One DCGM test, its result per GPU and what DCGM said about it."""

    category: str
    name: str
    results: dict[str, str] = field(default_factory=dict)  # gpu ids -> Status value or "not_run"
    messages: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        values = set(self.results.values())
        for worst in (Status.FAIL, "not_run", Status.WARN, Status.OK):
            if worst in values:
                return str(worst)
        return str(Status.NOT_APPLICABLE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "name": self.name,
            "status": self.status,
            "results": self.results,
            "messages": self.messages,
        }


def _status(raw: Any) -> str:
    return str(_STATUS.get(" ".join(str(raw).lower().split()), "not_run"))


def _texts(value: Any) -> list[str]:
    """DCGM's warnings/info: strings, or objects with a 'warning'/'message' text."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("warning") or item.get("message") or item.get("info") or json.dumps(item)
        text = " ".join(str(item).split())
        if text:
            out.append(text)
    return out


def _entity(result: dict[str, Any]) -> str:
    for key in ("gpu_ids", "gpu_id", "entity_id"):
        if key in result:
            return str(result[key])
    return "all"


def parse_diag_json(text: str) -> tuple[list[DiagTest], str | None]:
    """(tests, DCGM version) from `dcgmi diag -j` output; ValueError when it holds no document."""
    start = text.find("{")  # dcgmi may print warning lines before the document
    if start < 0:
        raise ValueError("no JSON document in dcgmi's output")
    doc = json.loads(text[start:])
    root = doc
    for key in ("DCGM GPU Diagnostic", "DCGM Diagnostic"):
        if isinstance(doc, dict) and key in doc:
            root = doc[key]
            break
    if not isinstance(root, dict):
        raise ValueError("dcgmi's document has no diagnostic object")
    version = root.get("version") or doc.get("version") if isinstance(doc, dict) else None
    groups: list[tuple[str, list[Any]]] = []
    for cat in root.get("test_categories") or []:
        if isinstance(cat, dict):
            groups.append((str(cat.get("category", "")), cat.get("tests") or []))
    if isinstance(root.get("tests"), list):
        groups.append(("", root["tests"]))
    tests: list[DiagTest] = []
    for category, items in groups:
        for item in items:
            if not isinstance(item, dict):  # DCGM 3.x emits nulls between tests
                continue
            test = DiagTest(
                category=category or str(item.get("category", "")), name=str(item.get("name", "?"))
            )
            for result in item.get("results") or []:
                if not isinstance(result, dict):
                    continue
                test.results[_entity(result)] = _status(result.get("status"))
                test.messages += _texts(result.get("warnings")) + _texts(result.get("info"))
            tests.append(test)
    return tests, (str(version) if version else None)


@dataclass
class DiagOutcome:
    """The DCGM step: status, a one-line summary and the tests."""

    status: Status
    summary: str
    tests: list[DiagTest] = field(default_factory=list)
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "summary": self.summary,
            "version": self.version,
            "tests": [t.to_dict() for t in self.tests],
        }


def judge_diag(tests: list[DiagTest], returncode: int | None, version: str | None = None) -> DiagOutcome:
    """Fail on any failed test; a run with no executed test is an error, not a pass."""
    failed = [t for t in tests if t.status == Status.FAIL]
    not_run = [t for t in tests if t.status == "not_run"]
    warned = [t for t in tests if t.status == Status.WARN]
    ran = [t for t in tests if t.status in (Status.OK, Status.WARN, Status.FAIL)]
    if failed:
        detail = "; ".join(f"{t.name}: {t.messages[0] if t.messages else 'failed'}" for t in failed)
        return DiagOutcome(Status.FAIL, f"{len(failed)} DCGM test(s) failed: {detail}", tests, version)
    if not ran:
        return DiagOutcome(Status.ERROR, "DCGM ran no test (see its messages)", tests, version)
    if returncode not in (0, None):
        return DiagOutcome(Status.FAIL, f"dcgmi diag exited with {returncode}", tests, version)
    if not_run:
        names = ", ".join(t.name for t in not_run)
        return DiagOutcome(Status.WARN, f"DCGM tests with an unknown result: {names}", tests, version)
    if warned:
        names = ", ".join(t.name for t in warned)
        return DiagOutcome(Status.WARN, f"{len(ran)} DCGM tests ran; warnings in {names}", tests, version)
    return DiagOutcome(Status.OK, f"all {len(ran)} DCGM tests passed", tests, version)


def run_dcgm_diag(level: int, timeout_s: float) -> DiagOutcome:
    """Run `dcgmi diag -r level -j` (not_present when DCGM is not installed)."""
    dcgmi = shutil.which("dcgmi")
    if dcgmi is None:
        return DiagOutcome(Status.NOT_PRESENT, "dcgmi not found: install DCGM (the dcgm role) to run it")
    result = run_process([dcgmi, "diag", "-r", str(level), "-j"], timeout_s=timeout_s)
    if result.timed_out:
        return DiagOutcome(Status.ERROR, f"dcgmi diag -r {level} did not finish within {timeout_s:.0f} s")
    try:
        tests, version = parse_diag_json(result.stdout)
    except ValueError as exc:
        return DiagOutcome(Status.ERROR, f"cannot read dcgmi's output ({exc}): {result.tail()}")
    return judge_diag(tests, result.returncode, version)
