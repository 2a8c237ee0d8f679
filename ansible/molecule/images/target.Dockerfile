# The Molecule platform: a fresh Debian 12 machine with systemd as PID 1 (run
# with the capabilities in each molecule.yml), python3 for Ansible's modules,
# one ordinary login user, nothing else. Built from the local base image only.
ARG BASE_IMAGE=envkit/debian:bookworm
FROM ${BASE_IMAGE}
ENV container=docker DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv dbus python3 python3-apt ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --shell /bin/bash ops
# Units that make no sense in a container and keep boot from settling.
RUN systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
      getty.target console-getty.service systemd-logind.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
