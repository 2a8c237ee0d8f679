"""`--check --diff` on a brand-new GPU host must pass (issue 17, defect 8).

The first thing an operator runs against a new server is a dry run. The target
here is the Molecule platform image as it boots for the first time: apt's
package lists empty (the image deletes them), no Docker, no NVIDIA source. The
whole site.yml runs in check mode with the GPU path forced on; it must end
without a failed task, and the host must be exactly as it was (check mode
changes nothing). Results come from Ansible's own stats (envkit_stats).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import ANSIBLE_DIR, BIN, tool_env

pytestmark = [pytest.mark.ansible, pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1500)]

IMAGE = "envkit-molecule/target:1"
# What the Molecule platforms grant (--privileged is refused on this host).
CAPS = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
]


def docker(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)


def host_state(name: str) -> dict[str, str]:
    """What check mode must leave alone: packages, apt's sources and lists, /etc/docker."""
    script = (
        "dpkg-query -W -f '${Package} ${Version} ${Status}\\n' | sort | sha256sum; "
        "ls -la /etc/apt/sources.list.d /etc/apt/preferences.d /var/lib/apt/lists 2>&1 | sha256sum; "
        "ls -d /etc/docker /opt/envkit /etc/modprobe.d/blacklist-nouveau.conf 2>&1"
    )
    proc = docker("exec", name, "sh", "-c", script)
    lines = proc.stdout.splitlines()
    return {"packages": lines[0], "apt": lines[1], "paths": "\n".join(lines[2:])}


@pytest.fixture
def fresh_target(molecule_images):
    """A first-boot target container (systemd as PID 1), removed afterwards."""
    name = f"envkit-roles-fresh-{uuid.uuid4().hex[:8]}"
    args = ["run", "-d", "--name", name, "--hostname", name]
    args += [f"--cap-add={cap}" for cap in CAPS]
    args += ["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"]
    args += ["--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", IMAGE]
    proc = docker(*args)
    assert proc.returncode == 0, proc.stderr
    try:
        # Until systemd has created its bus, systemctl cannot even ask.
        wait = "for i in $(seq 60); do [ -S /run/systemd/private ] && break; sleep 1; done; systemctl is-system-running --wait"
        boot = docker("exec", name, "sh", "-c", wait, timeout=240)
        assert boot.stdout.strip() in ("running", "degraded"), boot.stdout + boot.stderr
        yield name
    finally:
        docker("rm", "-f", "-v", name)


def test_check_diff_on_a_fresh_host_passes_and_changes_nothing(fresh_target: str, tmp_path: Path) -> None:
    lists = docker("exec", fresh_target, "sh", "-c", "ls /var/lib/apt/lists | grep -c _Packages || true")
    assert lists.stdout.strip() == "0", "the target must start with empty apt lists"
    assert docker("exec", fresh_target, "sh", "-c", "command -v dockerd").returncode != 0, (
        "Docker is preinstalled"
    )
    before = host_state(fresh_target)

    inventory = {
        "all": {
            "hosts": {
                fresh_target: {
                    "ansible_connection": "community.docker.docker",
                    "ansible_become": False,
                    # No GPU here: force the GPU path, as on a new GPU server.
                    "gpu_facts_override": True,
                    "envkit_controller_wheelhouse": str(ANSIBLE_DIR.parent / "build" / "envkit-wheelhouse"),
                }
            }
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    stats = tmp_path / "stats"
    env = tool_env(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_CALLBACK_PLUGINS=str(ANSIBLE_DIR / "molecule" / "plugins" / "callback"),
        ANSIBLE_CALLBACKS_ENABLED="envkit_stats",
        ENVKIT_STATS_DIR=str(stats),
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "--check", "--diff", "playbooks/site.yml"],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    runs = [json.loads(p.read_text()) for p in sorted(stats.glob("*.json"))]
    assert runs, f"no stats written (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    run = runs[-1]
    assert run["check"] is True
    failed = [f"{t['task']}: {t.get('msg', '')[:400]}" for t in run["tasks"] if t["status"] == "failed"]
    assert not failed and proc.returncode == 0, (
        f"--check failed on a fresh host: {failed}\n{proc.stdout[-3000:]}"
    )
    assert sum(h["unreachable"] for h in run["hosts"].values()) == 0
    # A dry run that reports nothing to do would be wrong on a new host.
    assert sum(h["changed"] for h in run["hosts"].values()) > 0
    assert host_state(fresh_target) == before, "check mode changed the host"
