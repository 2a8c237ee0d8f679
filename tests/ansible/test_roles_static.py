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

from envkit.matrix import load_matrix
from tests.ansible.conftest import ANSIBLE_DIR, BIN, tool_env

pytestmark = pytest.mark.ansible

# The roles held to the contract below; a new role joins this tuple.
ROLES = (
    "gpu_facts",
    "nvidia_driver",
    "nvidia_fabricmanager",
    "docker_engine",
    "nvidia_container_toolkit",
    "dcgm",
    "envkit",
)
# Roles with per-release variables (vars/<distribution>-<major>.yml through first_found).
OS_RELEASES = ("Debian-12", "Ubuntu-22", "Ubuntu-24")
OS_ROLES = tuple(role for role in ROLES if role != "gpu_facts")  # gpu_facts reads sysfs only
# Role defaults that are the version matrix's values (envkit/data/matrix.yaml, `ansible:`):
# matrix key -> the (role, variable) defaults that carry it (site.yml passes the matrix's).
MATRIX_DEFAULTS = {
    "nvidia_driver_branch": (
        ("nvidia_driver", "nvidia_driver_branch"),
        ("nvidia_fabricmanager", "nvidia_fabricmanager_branch"),
    ),
    "nvidia_container_toolkit_version": (("nvidia_container_toolkit", "nvidia_container_toolkit_version"),),
    "dcgm_major_version": (("dcgm", "dcgm_major_version"),),
    "dcgm_cuda_major_version": (("dcgm", "dcgm_cuda_major_version"),),
}


def matrix_ansible() -> dict[str, str]:
    """The `ansible:` table of THE version matrix, read the way envkit reads it."""
    return load_matrix().ansible


PLAYBOOKS = ("playbooks/site.yml", "playbooks/verify.yml")


def run_in_ansible_dir(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = tool_env(ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"))
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


def test_role_version_defaults_equal_the_matrix() -> None:
    """Standalone roles carry the matrix's versions as plain defaults; they must not drift."""
    matrix = matrix_ansible()
    assert set(MATRIX_DEFAULTS) == set(matrix), "a matrix key without a role default (or the reverse)"
    for key, carriers in MATRIX_DEFAULTS.items():
        for role, var in carriers:
            default = load_yaml(ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml")[var]
            assert default == matrix[key], f"{role}: {var} is {default!r}, the matrix says {matrix[key]!r}"


def test_site_playbook_passes_the_matrix_versions() -> None:
    plays = load_yaml_list(ANSIBLE_DIR / "playbooks" / "site.yml")
    roles = {r["role"]: r for r in plays[0]["roles"]}
    for key, carriers in MATRIX_DEFAULTS.items():
        for role, var in carriers:
            assert roles[role]["vars"][var] == f"{{{{ envkit_matrix.ansible.{key} }}}}", var


def test_site_playbook_order_and_gpu_conditions() -> None:
    """Fabric Manager and DCGM after the driver, on GPU hosts only; accept off by default."""
    play = load_yaml_list(ANSIBLE_DIR / "playbooks" / "site.yml")[0]
    order = [r["role"] for r in play["roles"]]
    assert order.index("nvidia_driver") < order.index("nvidia_fabricmanager")
    assert order.index("nvidia_driver") < order.index("dcgm")
    roles = {r["role"]: r for r in play["roles"]}
    for role in ("nvidia_driver", "nvidia_fabricmanager", "nvidia_container_toolkit", "dcgm"):
        assert roles[role]["when"] == "gpu_facts_nvidia_present | bool", role
    assert (
        "gpu_facts_nvswitch_present"
        in roles["nvidia_fabricmanager"]["vars"]["nvidia_fabricmanager_nvswitch_present"]
    )
    accept = [
        t
        for t in play["post_tasks"]
        if t.get("ansible.builtin.import_role", {}).get("tasks_from") == "accept.yml"
    ]
    assert len(accept) == 1 and accept[0]["tags"] == ["never", "accept"], play["post_tasks"]


def load_yaml_list(path: Path) -> list:
    return yaml.safe_load(path.read_text())


def jinja_names(value) -> set[str]:
    """Every identifier inside the Jinja expressions of a YAML value."""
    if isinstance(value, dict):
        return set().union(*(jinja_names(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(jinja_names(v) for v in value)) if value else set()
    if not isinstance(value, str):
        return set()
    names: set[str] = set()
    for expr in re.findall(r"\{\{(.*?)\}\}|\{%(.*?)%\}", value, re.DOTALL):
        names |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(expr)))
    return names


@pytest.mark.parametrize("role", ROLES)
def test_no_role_default_reads_another_roles_variables(role: str) -> None:
    """A role used alone must not depend on another role having run (site.yml wires them)."""
    others = [r for r in ROLES if r != role]
    for name, value in load_yaml(ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").items():
        foreign = sorted(n for n in jinja_names(value) if any(n.startswith(f"{o}_") for o in others))
        foreign += ["envkit_matrix"] if "envkit_matrix" in jinja_names(value) else []
        assert not foreign, f"{role}: {name} reads {foreign}"


# Task keywords whose strings are bare Jinja expressions (no braces).
BARE_EXPRESSIONS = ("when", "that", "failed_when", "changed_when", "until")


def task_names(node, key: str = "") -> set[str]:
    """Identifiers a task file reads: Jinja in any string, whole strings of `when` & co."""
    if isinstance(node, dict):
        return set().union(set(), *(task_names(v, k) for k, v in node.items()))
    if isinstance(node, list):
        return set().union(set(), *(task_names(v, key) for v in node))
    if isinstance(node, str) and key in BARE_EXPRESSIONS:
        return jinja_names("{{ " + node + " }}")
    return jinja_names(node)


@pytest.mark.parametrize("role", ROLES)
def test_no_role_task_reads_another_roles_variables(role: str) -> None:
    others = [r for r in ROLES if r != role]
    offenders = []
    for path in sorted((ANSIBLE_DIR / "roles" / role).glob("*/*.yml")):
        if path.parent.name in ("meta", "defaults"):
            continue
        names = task_names(yaml.safe_load(path.read_text()))
        foreign = sorted(n for n in names if any(n.startswith(f"{o}_") for o in others))
        offenders += [f"{path.relative_to(ANSIBLE_DIR)}: {n}" for n in foreign]
    assert not offenders, offenders


@pytest.mark.parametrize("role", OS_ROLES)
def test_per_release_variables_exist_and_agree(role: str) -> None:
    """vars/<distribution>-<major>.yml for each supported release, all with the same keys."""
    keys = {}
    for release in OS_RELEASES:
        path = ANSIBLE_DIR / "roles" / role / "vars" / f"{release}.yml"
        assert path.is_file(), f"{role} has no vars/{release}.yml"
        keys[release] = sorted(load_yaml(path))
        assert keys[release] and all(k.startswith(f"{role}__") for k in keys[release]), keys[release]
    assert len({tuple(v) for v in keys.values()}) == 1, keys
    os_vars = (ANSIBLE_DIR / "roles" / role / "tasks" / "os_vars.yml").read_text()
    assert "ansible.builtin.first_found" in os_vars
    assert "ansible_facts.distribution }}-{{ ansible_facts.distribution_major_version }}.yml" in os_vars


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_a_molecule_scenario_on_the_local_image(role: str) -> None:
    scenario = ANSIBLE_DIR / "roles" / role / "molecule" / "default"
    for name in ("molecule.yml", "converge.yml", "tests/test_default.py"):
        assert (scenario / name).is_file(), f"{role}: molecule/default/{name} is missing"
    config = load_yaml(scenario / "molecule.yml")
    assert config["dependency"]["enabled"] is False  # no Galaxy here
    assert config["driver"]["name"] == "docker" and config["verifier"]["name"] == "testinfra"
    for platform in config["platforms"]:
        assert platform["pre_build_image"] is True and platform["pull"] is False, platform["name"]
        assert platform["image"].startswith("envkit-molecule/"), platform["image"]
    sequence = config["scenario"]["test_sequence"]
    for step in ("create", "prepare", "converge", "idempotence", "check", "verify", "destroy"):
        assert step in sequence, f"{role}: {step} missing from test_sequence"
    assert sequence.index("idempotence") < sequence.index("check") < sequence.index("verify")


def test_no_version_literal_of_the_matrix_elsewhere_in_ansible() -> None:
    """The matrix's versions appear once each: as the owning role's default."""
    matrix = matrix_ansible()
    allowed = {
        (f"roles/{role}/defaults/main.yml", f'{var}: "{matrix[key]}"')
        for key, carriers in MATRIX_DEFAULTS.items()
        for role, var in carriers
    }
    # A one- or two-digit major ("4", "13") cannot be told from any other number
    # in a line; the default-equals-matrix test above holds those.
    versions = [v for v in matrix.values() if len(v) >= 3]
    offenders = []
    for path in ANSIBLE_DIR.rglob("*.yml"):
        rel = str(path.relative_to(ANSIBLE_DIR))
        if rel.startswith((".cache/", ".ansible/")):  # ansible-lint's caches
            continue
        for line in path.read_text().splitlines():
            for value in versions:
                # "580" as a version, not as the start of "580.95.05" in an example.
                if (
                    re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", line)
                    and (rel, line.strip()) not in allowed
                ):
                    offenders.append(f"{rel}: {line.strip()}")
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
    assert run_fact(tmp_path) == {"gpus": [], "driver_loaded_version": "", "nvswitches": []}
