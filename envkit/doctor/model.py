"""What doctor reports: checks, their statuses, and the whole report."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from envkit.vocab import FAILING_STATUSES, Status, format_id

SCHEMA_VERSION = 1
SCHEMA_ID = format_id("doctor", SCHEMA_VERSION)  # "envkit.doctor/v1", the schema file's $id


def schema_path() -> Path:
    """The JSON Schema that `envkit doctor --json` output follows."""
    return Path(str(resources.files("envkit") / "data" / "doctor.schema.json"))


# The statuses are envkit.vocab.Status; these names are kept for the probes' imports.
OK = Status.OK
WARN = Status.WARN
FAIL = Status.FAIL
NOT_PRESENT = Status.NOT_PRESENT
NOT_APPLICABLE = Status.NOT_APPLICABLE
ERROR = Status.ERROR
STATUSES = tuple(Status)

# Display and grouping order of the areas.
AREAS = (
    "host",
    "driver",
    "gpu",
    "fabric",
    "xid",
    "cuda",
    "pytorch",
    "tensorflow",
    "compat",
    "docker",
    "dcgm",
)

# A check with one of these statuses makes the machine "not usable" (exit 1):
# `error` too, because a probe that hangs or crashes (a hung CUDA init) is
# something the stack did, not something doctor may wave through.
FAILING = tuple(s for s in STATUSES if s in FAILING_STATUSES)


@dataclass
class Check:
    """One verified fact: a status, the evidence for it and how to fix it."""

    area: str
    name: str
    status: str
    evidence: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        self.status = Status(self.status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "name": self.name,
            "status": str(self.status),
            "evidence": self.evidence,
            "hint": self.hint,
            "details": self.details,
            "elapsed_s": self.elapsed_s,
        }


@dataclass
class ProbeResult:
    """What a probe returns: its checks plus facts later probes build on."""

    checks: list[Check]
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """All checks of one doctor run and the verdict drawn from them."""

    checks: list[Check]
    facts: dict[str, Any]
    options: dict[str, Any]
    started: str
    elapsed_s: float
    envkit_version: str

    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for c in self.checks if c.status == s) for s in STATUSES}

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status in FAILING]

    @property
    def usable(self) -> bool:
        return not self.failing()

    @property
    def exit_code(self) -> int:
        return 0 if self.usable else 1

    def verdict(self) -> str:
        """One line a person reads first."""
        counts = self.counts()
        if not self.checks:
            return "nothing checked (see --only/--skip)"
        tally = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n)
        gpus = self.facts.get("gpu_count")
        where = f"{gpus} GPU(s)" if gpus else "no GPU"
        if self.usable:
            warn = f"; {counts[WARN]} warning(s) to read" if counts[WARN] else ""
            return f"usable ({where}){warn} - {tally}"
        names = ", ".join(f"{c.area}/{c.name}" for c in self.failing())
        return f"NOT usable: {names} - {tally}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "envkit_version": self.envkit_version,
            "started": self.started,
            "elapsed_s": round(self.elapsed_s, 3),
            "options": self.options,
            "verdict": {
                "usable": self.usable,
                "exit_code": self.exit_code,
                "summary": self.verdict(),
                "counts": self.counts(),
            },
            "facts": self.facts,
            "checks": [c.to_dict() for c in self.checks],
        }
