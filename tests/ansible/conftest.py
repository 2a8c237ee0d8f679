"""Shared bits of the Ansible tests: paths, the venv's tools, the Molecule images.

The roles are converged by Molecule (ansible/roles/<role>/molecule/default and
ansible/molecule/site), run one scenario per test by test_molecule.py; these
helpers only locate things and build the local images the scenarios use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, skip_or_fail

ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict[str, str]:
    """The environment Ansible tools run in: the venv's bin first (Molecule needs ansible-config)."""
    env = {**os.environ, "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", **extra}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


@pytest.fixture(scope="session")
def molecule_images(docker_client, base_image) -> None:
    """envkit-molecule/target:1 and mirror:1, built from the local base (cached by hash)."""
    if subprocess.run(["docker", "version"], capture_output=True, check=False).returncode != 0:
        skip_or_fail("the docker CLI cannot reach the engine (Molecule's docker driver needs it)")
    proc = subprocess.run(
        [str(ANSIBLE_DIR / "molecule" / "build-images.sh")],
        env=tool_env(BASE_IMAGE=base_image), capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"building the Molecule images failed:\n{proc.stderr[-3000:]}", pytrace=False)
