"""Shared helpers and tests for the testinfra verifiers of ansible/'s scenarios.

Each scenario's tests/test_default.py imports what it needs, e.g.

    from envkit_molecule import TARGETS, test_check_run_changes_nothing  # noqa: F401

(molecule.yml puts this directory on PYTHONPATH). The stats come from the
envkit_stats callback: Ansible's own counts, not PLAY RECAP text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

# testinfra_hosts for tests that inspect the converged machines (not the mirror).
TARGETS = ["ansible://targets"]
ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"


def role_default(role: str, name: str) -> Any:
    """A role's default as defaults/main.yml writes it (a test's expected value)."""
    return yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text())[name]


def stats_dir() -> Path:
    """Where envkit_stats wrote this scenario's files (same rule as the callback)."""
    explicit = os.environ.get("ENVKIT_STATS_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "envkit-stats"


def runs(playbook: str | None = None, check: bool | None = None) -> list[dict[str, Any]]:
    """The recorded runs in order, optionally only of `playbook` / (not) in check mode."""
    found = []
    for path in sorted(stats_dir().glob("*.json")):
        data = json.loads(path.read_text())
        if playbook is not None and data["playbook"] != playbook:
            continue
        if check is not None and data["check"] != check:
            continue
        found.append(data)
    return found


def changed_tasks(run: dict[str, Any]) -> list[str]:
    """`host: task` for every changed result of a run (for failure messages)."""
    return [f"{t['host']}: {t['task']}" for t in run["tasks"] if t["status"] == "changed"]


def total(run: dict[str, Any], key: str) -> int:
    """Sum of one stats counter (changed, failures, unreachable...) over the run's hosts."""
    return sum(counts.get(key, 0) for counts in run["hosts"].values())


def messages(run: dict[str, Any], task: str) -> list[str]:
    """The messages the named task produced (debug msg, fail msg) in a run."""
    return [t["msg"] for t in run["tasks"] if t["task"].endswith(task) and "msg" in t]


def test_second_converge_changes_nothing() -> None:
    """Molecule's idempotence step, re-checked from Ansible's stats."""
    converges = runs("converge.yml", check=False)
    assert len(converges) >= 2, f"expected converge + idempotence runs, found {len(converges)}"
    last = converges[-1]
    assert total(last, "failures") == 0 and total(last, "unreachable") == 0, last["hosts"]
    assert total(last, "changed") == 0, f"not idempotent: {changed_tasks(last)}"


def test_check_run_changes_nothing() -> None:
    """`--check` on the converged machine finds nothing to change."""
    checks = runs("converge.yml", check=True)
    assert checks, "no check-mode run recorded (is `check` in the scenario's test_sequence?)"
    last = checks[-1]
    assert total(last, "failures") == 0, last["tasks"]
    assert total(last, "changed") == 0, f"--check would change: {changed_tasks(last)}"


def run_playbook(playbook: str, *args: str, timeout: int = 900) -> dict[str, Any]:
    """Run `playbook` (relative to ansible/) against the scenario's inventory, the
    way a user would after the converge; returns its envkit_stats record plus rc."""
    import subprocess
    import tempfile

    ansible_dir = ROLES_DIR.parent
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    with tempfile.TemporaryDirectory(prefix="envkit-stats-") as tmp:
        env = {**os.environ, "ENVKIT_STATS_DIR": tmp, "ANSIBLE_NOCOLOR": "1"}
        # --limit: the scenario's mirror is in the inventory too; only targets are provisioned.
        argv = ["ansible-playbook", "-i", str(inventory), "--limit", "targets", str(ansible_dir / playbook)]
        proc = subprocess.run(
            [*argv, *args],
            cwd=ansible_dir, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        recorded = sorted(Path(tmp).glob("*.json"))
        if not recorded:
            tail = proc.stdout[-3000:] + proc.stderr[-3000:]
            raise AssertionError(f"{playbook} wrote no stats (rc={proc.returncode}):\n{tail}")
        data = json.loads(recorded[-1].read_text())
    data["rc"] = proc.returncode
    return data


def failed_messages(run: dict[str, Any]) -> list[str]:
    """The messages of the tasks that failed a run."""
    return [t.get("msg", "") for t in run["tasks"] if t["status"] == "failed"]
