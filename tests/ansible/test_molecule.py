"""Every Molecule scenario of ansible/, one test each: `molecule test` as a user runs it.

A scenario is a role's molecule/default or ansible/molecule/<name>; the test id
names it (test_scenario[docker_engine], test_scenario[site]). Results come from
Molecule's exit status and Ansible's own stats (the envkit_stats callback's
JSON, one file per playbook run), never from PLAY RECAP text. Scenarios run
one after another: two at once would starve a 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import ANSIBLE_DIR, BIN, tool_env

pytestmark = [pytest.mark.ansible, pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]


def scenarios() -> list[tuple[str, Path, str]]:
    """(id, project directory, scenario name) for every scenario in the tree."""
    found = [
        (path.parents[2].name, path.parents[2], "default")
        for path in sorted((ANSIBLE_DIR / "roles").glob("*/molecule/default/molecule.yml"))
    ]
    found += [
        (path.parent.name, ANSIBLE_DIR, path.parent.name)
        for path in sorted((ANSIBLE_DIR / "molecule").glob("*/molecule.yml"))
    ]
    return found


SCENARIOS = scenarios()


def load_runs(stats_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(stats_dir.glob("*.json"))]


def describe(runs: list[dict]) -> str:
    """One line per playbook run: what ran, how long, and Ansible's counts."""
    lines = []
    for run in runs:
        counts = {
            k: sum(h[k] for h in run["hosts"].values()) for k in ("ok", "changed", "failures", "unreachable")
        }
        mode = " --check" if run["check"] else ""
        lines.append(f"  {run['playbook']}{mode}: {run['seconds']} s, {counts}")
        for task in run["tasks"]:
            if task["status"] in ("failed", "unreachable"):
                lines.append(f"    FAILED {task['host']}: {task['task']}: {task.get('msg', '')[:600]}")
    return "\n".join(lines)


def destroy_leftovers(project: Path, scenario: str) -> None:
    """A killed earlier run leaves its containers (the sequence has no destroy first)."""
    config = yaml.safe_load((project / "molecule" / scenario / "molecule.yml").read_text())
    names = [p["name"] for p in config["platforms"]]
    found = subprocess.run(
        ["docker", "ps", "-aq", *[f"--filter=name=^{n}$" for n in names]],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    if found:
        subprocess.run(
            [str(BIN / "molecule"), "destroy", "--scenario-name", scenario],
            cwd=project, env=tool_env(), capture_output=True, timeout=600, check=False,
        )  # fmt: skip


@pytest.mark.parametrize(("project", "scenario"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenario(project: Path, scenario: str, molecule_images, tmp_path: Path) -> None:
    destroy_leftovers(project, scenario)
    stats = tmp_path / "stats"
    proc = subprocess.run(
        [str(BIN / "molecule"), "test", "--scenario-name", scenario],
        cwd=project, env=tool_env(ENVKIT_STATS_DIR=str(stats)),
        capture_output=True, text=True, timeout=1700, check=False,
    )  # fmt: skip
    runs = load_runs(stats)
    summary = describe(runs)
    print(f"\n{project.name}/{scenario}:\n{summary}")
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        # Molecule's own verdict per step is its last block (DETAILS / SCENARIO RECAP).
        verdict = out[out.rfind("DETAILS") :] if "DETAILS" in out else out[-4000:]
        pytest.fail(
            f"molecule scenario {project.name}/{scenario} failed (rc={proc.returncode}):\n"
            f"{summary}\n{verdict[-3000:]}\n--- output tail ---\n{out[-6000:]}",
            pytrace=False,
        )
    # Molecule passed; hold it to Ansible's stats as well: converged, then idempotent.
    converges = [r for r in runs if r["playbook"] == "converge.yml" and not r["check"]]
    assert len(converges) >= 2, f"expected a converge and an idempotence run:\n{summary}"
    assert sum(h["failures"] for h in converges[0]["hosts"].values()) == 0, summary
    assert sum(h["changed"] for h in converges[-1]["hosts"].values()) == 0, f"not idempotent:\n{summary}"
    checks = [r for r in runs if r["playbook"] == "converge.yml" and r["check"]]
    assert checks and sum(h["changed"] for h in checks[-1]["hosts"].values()) == 0, f"check mode:\n{summary}"
