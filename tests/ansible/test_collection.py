"""The roles as the envkit.gpu collection: built, installed offline, used by name.

`ansible-galaxy collection build` in ansible/ gives envkit-gpu-<version>.tar.gz;
installing the tarball needs no server (the Galaxy server is pointed at a dead
address to prove it), and a playbook outside this tree runs a role from it.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import ANSIBLE_DIR, BIN, tool_env
from tests.ansible.test_roles_static import ROLES

pytestmark = pytest.mark.ansible


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(tarball, collections path) of a build and an offline install of it."""
    work = tmp_path_factory.mktemp("collection")
    built = run(
        str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(work), cwd=ANSIBLE_DIR
    )
    assert built.returncode == 0, built.stdout + built.stderr
    galaxy = yaml.safe_load((ANSIBLE_DIR / "galaxy.yml").read_text())
    tarball = work / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    assert tarball.is_file(), sorted(p.name for p in work.iterdir())
    collections = work / "collections"
    # A dead server: any attempt to reach Galaxy fails the install. Only this
    # collections path: a copy elsewhere (ansible-lint installs the project's
    # collection under ~/.ansible) would make galaxy answer "already installed".
    inst = run(
        str(BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(collections),
        cwd=work, ANSIBLE_GALAXY_SERVER="http://127.0.0.1:9/", ANSIBLE_COLLECTIONS_PATH=str(collections),
    )  # fmt: skip
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return tarball, collections


def test_tarball_holds_the_roles_and_no_test_scaffolding(installed) -> None:
    tarball, _ = installed
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for role in ROLES:
        for part in ("tasks/main.yml", "defaults/main.yml", "meta/argument_specs.yml"):
            assert f"roles/{role}/{part}" in names, f"{role}/{part}"
    assert not [n for n in names if "/molecule/" in f"/{n}" or n.startswith(("inventories", "molecule"))]


def test_installed_collection_lists_its_roles(installed) -> None:
    _, collections = installed
    root = collections / "ansible_collections" / "envkit" / "gpu"
    assert json.loads((root / "MANIFEST.json").read_text())["collection_info"]["name"] == "gpu"
    listed = run(
        str(BIN / "ansible-doc"), "-t", "role", "-l", "envkit.gpu", "--json",
        cwd=collections, ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_ROLES_PATH=str(collections / "none"),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert {f"envkit.gpu.{r}" for r in ROLES} <= set(json.loads(listed.stdout)), listed.stdout


def test_a_playbook_elsewhere_runs_a_role_from_the_collection(installed, tmp_path: Path) -> None:
    """gpu_facts by its full name on localhost, against a fake sysfs with one GPU."""
    _, collections = installed
    dev = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:18:00.0"
    dev.mkdir(parents=True)
    for name, value in (("vendor", "0x10de"), ("device", "0x2335"), ("class", "0x030200")):
        (dev / name).write_text(value + "\n")
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Use envkit.gpu from another project",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [
                        {
                            "role": "envkit.gpu.gpu_facts",
                            "gpu_facts_sysfs_root": str(tmp_path / "sys"),
                            "gpu_facts_install_local_fact": False,
                        }
                    ],
                    "tasks": [
                        {
                            "name": "Show the facts",
                            "ansible.builtin.debug": {
                                "msg": "{{ gpu_facts_nvidia_gpus | map(attribute='pci_address') | list }}"
                            },
                        }
                    ],
                }
            ],
            sort_keys=False,
        )
    )
    proc = run(
        str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
        cwd=tmp_path, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_ROLES_PATH=str(tmp_path / "none"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    shown = [
        t["hosts"]["localhost"]["msg"]
        for play in result["plays"]
        for t in play["tasks"]
        if t["task"]["name"] == "Show the facts"
    ]
    assert shown == [["0000:18:00.0"]]
