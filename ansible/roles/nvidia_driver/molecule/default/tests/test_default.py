"""nvidia_driver's promises: Debian's driver packages installed and held, nouveau
blacklisted, persistenced enabled, a signed deb822 source, no reboot of a container."""

from __future__ import annotations

from envkit_molecule import (  # noqa: F401  (shared tests, collected here)
    TARGETS,
    messages,
    runs,
    test_check_run_changes_nothing,
    test_second_converge_changes_nothing,
)

testinfra_hosts = TARGETS

# nvidia_driver_debian_packages: Debian non-free's headless compute set.
DRIVER_PACKAGES = (
    "nvidia-kernel-dkms",
    "nvidia-smi",
    "libcuda1",
    "nvidia-persistenced",
    "firmware-nvidia-gsp",
)


def held(host) -> list[str]:
    # Multi-Arch: some packages (libcuda1) are listed as name:arch.
    out = host.check_output("dpkg --get-selections | awk '$2 == \"hold\" {print $1}'")
    return [name.split(":")[0] for name in out.split()]


def test_driver_packages_are_installed_and_held(host) -> None:
    holds = held(host)
    for pkg in DRIVER_PACKAGES:
        assert host.package(pkg).is_installed, pkg
        assert pkg in holds, f"{pkg} not held"
    # A held package survives an upgrade attempt: apt keeps it back.
    sim = host.run("apt-get -s --only-upgrade install nvidia-smi")
    assert "held" in sim.stdout.lower() or "is already the newest" in sim.stdout


def test_nonfree_source_is_deb822_with_signed_by(host) -> None:
    src = host.file("/etc/apt/sources.list.d/envkit-debian-nonfree.sources")
    assert src.mode == 0o644 and src.user == "root"
    assert src.contains("^Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg$")
    assert src.contains("^Components: contrib non-free non-free-firmware$")
    assert src.contains("^Suites: bookworm bookworm-updates$")
    assert src.contains("^Suites: bookworm-security$")


def test_nouveau_is_blacklisted_and_persistenced_enabled(host) -> None:
    conf = host.file("/etc/modprobe.d/blacklist-nouveau.conf")
    assert conf.mode == 0o644
    assert conf.contains("^blacklist nouveau$") and conf.contains("^options nouveau modeset=0$")
    assert host.service("nvidia-persistenced").is_enabled


def test_a_container_is_never_rebooted_and_the_pending_reboot_is_said() -> None:
    # The module cannot load in a container: installed, none loaded, reboot refused.
    first = runs("converge.yml", check=False)[0]
    pending = messages(first, "Say a reboot is pending")
    assert pending and "Reboot pending on" in pending[0], pending
    reboot = [t for t in first["tasks"] if t["task"].endswith("Reboot to load the new driver")]
    assert reboot and all(t["status"] == "skipped" for t in reboot), reboot
