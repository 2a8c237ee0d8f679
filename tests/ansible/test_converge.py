"""site.yml on a real Debian 12 systemd container: converge, upgrade, idempotence, check mode."""

from __future__ import annotations

import pytest

from tests.ansible.conftest import OLD_TOOLKIT, TOOLKIT_PACKAGES, Converged, matrix_ansible

pytestmark = [pytest.mark.ansible, pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_first_converge_installs_the_old_toolkit_pinned(converged: Converged) -> None:
    assert converged.first.recap()["failed"] == 0
    for pkg in TOOLKIT_PACKAGES:
        assert converged.toolkit_after_first[pkg] == f"{OLD_TOOLKIT} hold ok installed", pkg
