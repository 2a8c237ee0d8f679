"""The acceptance verdict: one document per node, versioned like doctor's."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from envkit import __version__
from envkit.vocab import Status, format_id

SCHEMA_ID = format_id("accept", 1)
STEPS = ("doctor", "soak", "memory", "peer", "allreduce", "dcgm", "train")


def schema_path() -> Path:
    """The JSON Schema `envkit accept --json` output follows."""
    return Path(str(resources.files("envkit") / "data" / "accept.schema.json"))


@dataclass
class Step:
    """One step of the sequence: status, one line, findings and the measurements behind them."""

    name: str
    status: Status
    summary: str
    findings: list[dict[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "summary": self.summary,
            "findings": self.findings,
            "details": self.details,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass
class AcceptReport:
    """All steps of one acceptance run and the verdict drawn from them."""

    node: dict[str, Any]
    options: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    elapsed_s: float = 0.0
    incomplete: bool = False

    @property
    def verdict(self) -> str:
        """pass | fail | incomplete: `fail` wins over `incomplete` (a found fault stays found)."""
        if any(s.status in (Status.FAIL, Status.ERROR) for s in self.steps):
            return "fail"
        return "incomplete" if self.incomplete else "pass"

    @property
    def exit_code(self) -> int:
        return {"pass": 0, "fail": 1, "incomplete": 130}[self.verdict]

    def summary(self) -> str:
        bad = [f"{s.name}: {s.summary}" for s in self.steps if s.status in (Status.FAIL, Status.ERROR)]
        warn = [s.name for s in self.steps if s.status == Status.WARN]
        if bad:
            return "NOT accepted - " + "; ".join(bad)
        if self.incomplete:
            done = ", ".join(s.name for s in self.steps) or "nothing"
            return f"incomplete (interrupted after {done})"
        tail = f"; warnings in {', '.join(warn)}" if warn else ""
        return f"accepted{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "schema_version": 1,
            "envkit_version": __version__,
            "started": self.started,
            "elapsed_s": round(self.elapsed_s, 3),
            "node": self.node,
            "options": self.options,
            "verdict": {
                "result": self.verdict,
                "exit_code": self.exit_code,
                "incomplete": self.incomplete,
                "summary": self.summary(),
            },
            "steps": [s.to_dict() for s in self.steps],
        }


def node_identity(device: str) -> dict[str, Any]:
    """Hostname, envkit version and, where NVML answers, the driver and each GPU's UUID."""
    node: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "envkit_version": __version__,
        "device": device,
        "driver_version": None,
        "gpus": [],
    }
    try:
        from envkit.nvml import nvml_session

        with nvml_session() as nvml:
            raw = nvml.nvmlSystemGetDriverVersion()
            node["driver_version"] = raw.decode() if isinstance(raw, bytes) else str(raw)
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                name, uuid = nvml.nvmlDeviceGetName(handle), nvml.nvmlDeviceGetUUID(handle)
                node["gpus"].append(
                    {
                        "index": i,
                        "name": name.decode() if isinstance(name, bytes) else str(name),
                        "uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    }
                )
    except Exception:  # identity is best effort: doctor reports what is wrong with NVML
        pass
    return node
