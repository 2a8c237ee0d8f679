"""The roles without a target: lint, syntax, the role contract, the GPU detector.

These cover what the container converge cannot: the Ubuntu and CUDA-repository
branches (only Debian targets can be built here: no Ubuntu mirror is reachable)
are linted and syntax-checked, and each role's variables are checked against
its argument spec and the version matrix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import ANSIBLE_DIR, BIN, matrix_ansible

pytestmark = pytest.mark.ansible

ROLES = ("gpu_facts", "nvidia_driver", "docker_engine", "nvidia_container_toolkit", "envkit")
PLAYBOOKS = ("playbooks/site.yml", "playbooks/verify.yml")


def run_in_ansible_dir(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "NO_COLOR": "1"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(
        list(args), cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_ansible_lint_production_profile_passes() -> None:
    proc = run_in_ansible_dir(str(BIN / "ansible-lint"), "--profile", "production", "--nocolor")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_yamllint_passes() -> None:
    proc = run_in_ansible_dir(str(BIN / "yamllint"), "-s", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax_check(playbook: str) -> None:
    proc = run_in_ansible_dir(
        str(BIN / "ansible-playbook"), "-i", "inventories/example", "--syntax-check", playbook
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_inventory_has_a_fleet_and_an_airgapped_group() -> None:
    proc = run_in_ansible_dir(str(BIN / "ansible-inventory"), "-i", "inventories/example", "--list")
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert set(inv["gpu_hosts"]["hosts"]) == {"gpu-node-01", "gpu-node-02"}
    assert inv["airgapped"]["hosts"] == ["gpu-node-03"]
    # Group vars reach the hosts: air-gapped hosts take every URL from the mirror.
    airgapped = inv["_meta"]["hostvars"]["gpu-node-03"]
    urls = {k: v for k, v in airgapped.items() if k.endswith(("_url", "_mirror"))}
    assert urls and all("mirror.example.internal" in v for v in urls.values()), urls


def test_make_provision_lists_the_example_hosts() -> None:
    """`make provision` runs site.yml against INVENTORY (here only listing hosts)."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        # -o: never reinstall the venv from inside a test, even if pyproject.toml is newer.
        ["make", "--no-print-directory", "-C", str(ANSIBLE_DIR.parent), "-o", ".venv/.envkit-installed",
         "provision", "INVENTORY=ansible/inventories/example", "ANSIBLE_ARGS=--list-hosts --list-tags"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for host in ("gpu-node-01", "gpu-node-02", "gpu-node-03"):
        assert host in proc.stdout
    for tag in ROLES:
        assert tag in proc.stdout


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_every_variable_is_prefixed_documented_and_declared(role: str) -> None:
    """defaults/main.yml is the manual and argument_specs the contract: they must agree."""
    role_dir = ANSIBLE_DIR / "roles" / role
    defaults = load_yaml(role_dir / "defaults" / "main.yml")
    spec = load_yaml(role_dir / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert defaults, f"{role} documents no variable"
    assert sorted(defaults) == sorted(spec), f"{role}: defaults and argument_specs disagree"
    for name in defaults:
        assert name.startswith(f"{role}_"), f"{name} is not prefixed by {role}_"
    # Each default carries a comment in the lines just above it (or a block above a group).
    text = (role_dir / "defaults" / "main.yml").read_text().splitlines()
    for name in defaults:
        idx = next(i for i, line in enumerate(text) if line.startswith(f"{name}:"))
        above = text[max(0, idx - 12) : idx]
        assert any(line.startswith("#") for line in above), f"{name} has no comment above it"
    for name, opt in spec.items():
        assert opt.get("description"), f"{role}: {name} has no description in argument_specs"


def test_role_version_fallbacks_equal_the_matrix() -> None:
    """The roles read versions from envkit_matrix; their standalone fallback must not drift."""
    matrix = matrix_ansible()
    expected = {
        ("nvidia_driver", "nvidia_driver_branch"),
        ("nvidia_container_toolkit", "nvidia_container_toolkit_version"),
    }
    for role, var in expected:
        raw = load_yaml(ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml")[var]
        assert f"envkit_matrix.ansible.{var}" in raw, raw
        fallback = re.search(r"default\('([^']*)'\)", raw)
        assert fallback and fallback.group(1) == matrix[var], f"{var} fallback differs from the matrix: {raw}"


def test_no_version_literal_of_the_matrix_elsewhere_in_ansible() -> None:
    matrix = matrix_ansible()
    offenders = []
    for path in ANSIBLE_DIR.rglob("*.yml"):
        text = path.read_text()
        for value in matrix.values():
            # "580" as a version, not as the start of "580.95.05" in an example.
            literal = re.compile(rf"(?<![\w.]){re.escape(value)}(?![\w.])")
            for line in text.splitlines():
                if literal.search(line) and "envkit_matrix" not in line:
                    offenders.append(f"{path.relative_to(ANSIBLE_DIR)}: {line.strip()}")
    assert not offenders, offenders


FACT = ANSIBLE_DIR / "roles" / "gpu_facts" / "files" / "nvidia_gpus.fact"


def fake_pci(root: Path, addr: str, vendor: str, klass: str, device: str = "0x2335") -> None:
    """A sysfs PCI device as the kernel lays it out (vendor, device, class files)."""
    dev = root / "bus" / "pci" / "devices" / addr
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "device").write_text(device + "\n")
    (dev / "class").write_text(klass + "\n")


def run_fact(sysfs: Path) -> dict:
    proc = subprocess.run(
        ["sh", str(FACT)], env={"GPU_FACTS_SYSFS": str(sysfs), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


def test_gpu_fact_lists_nvidia_display_and_3d_controllers_only(tmp_path: Path) -> None:
    fake_pci(tmp_path, "0000:18:00.0", "0x10de", "0x030200")  # H200: 3D controller
    fake_pci(tmp_path, "0000:3b:00.0", "0x10de", "0x030000", "0x2684")  # RTX 4090: VGA
    fake_pci(tmp_path, "0000:19:00.0", "0x10de", "0x068000", "0x22a3")  # NVSwitch bridge: not a GPU
    fake_pci(tmp_path, "0000:00:02.0", "0x8086", "0x030000")  # Intel iGPU
    driver = tmp_path / "bus" / "pci" / "drivers" / "nvidia"
    driver.mkdir(parents=True)
    (tmp_path / "bus/pci/devices/0000:18:00.0/driver").symlink_to(driver)
    (tmp_path / "module" / "nvidia").mkdir(parents=True)
    (tmp_path / "module" / "nvidia" / "version").write_text("580.95.05\n")

    fact = run_fact(tmp_path)
    gpus = {g["pci_address"]: g for g in fact["gpus"]}
    assert set(gpus) == {"0000:18:00.0", "0000:3b:00.0"}
    assert gpus["0000:18:00.0"]["driver"] == "nvidia"
    assert gpus["0000:3b:00.0"]["driver"] == ""
    assert gpus["0000:18:00.0"]["device_id"] == "0x2335"
    assert fact["driver_loaded_version"] == "580.95.05"


def test_gpu_fact_is_empty_without_nvidia_devices(tmp_path: Path) -> None:
    fake_pci(tmp_path, "0000:00:02.0", "0x8086", "0x030000")
    assert run_fact(tmp_path) == {"gpus": [], "driver_loaded_version": ""}
