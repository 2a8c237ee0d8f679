# A cluster node for tests/cluster: a fresh Debian 12 host with systemd as
# PID 1 (run with the capabilities of tests/cluster/conftest.py) and python3
# for Ansible. Slurm, munge and envkit are NOT here: the playbook installs them.
# The frameworks (torch CPU, tensorflow-cpu) are added by the fixture from the
# host's wheelhouse into /opt/envkit/venv and committed once, so three nodes
# do not download gigabytes each; the envkit role then installs envkit itself
# into that venv (its --upgrade is only-if-needed: the frameworks stay).
ARG BASE_IMAGE=envkit/debian:bookworm
FROM ${BASE_IMAGE}
ENV container=docker DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv dbus python3 python3-apt python3-venv \
      ca-certificates iproute2 procps \
 && rm -rf /var/lib/apt/lists/*
# Units that make no sense in a container and keep boot from settling.
RUN systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      getty.target console-getty.service systemd-logind.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
