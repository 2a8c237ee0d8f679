#!/usr/bin/env bash
# Make a Docker engine and the local base image available on this machine.
#
#  - installs Debian's docker.io (and debootstrap) when dockerd is missing;
#  - starts dockerd without systemd when no engine answers, and waits for it;
#  - builds the local base image envkit/debian:bookworm with debootstrap once
#    (no registry is reachable here, so nothing can be pulled).
#
# Idempotent: a second run finds everything in place and returns at once.
# Usage: scripts/docker-engine.sh [--no-base]
set -euo pipefail

BASE_TAG="${ENVKIT_BASE_IMAGE:-envkit/debian:bookworm}"
SUITE="${ENVKIT_BASE_SUITE:-bookworm}"
MIRROR="${ENVKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SOCK="${ENVKIT_DOCKER_SOCK:-/run/docker.sock}"
LOG="${ENVKIT_DOCKERD_LOG:-/var/log/dockerd.log}"
want_base=1
[ "${1:-}" = "--no-base" ] && want_base=0

say() { printf '[docker-engine] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

engine_up() { docker info >/dev/null 2>&1; }

if ! engine_up; then
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing Debian's docker.io engine"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    say "starting docker with systemd"
    as_root systemctl start docker
  else
    say "starting dockerd (no systemd) -> $LOG"
    as_root sh -c "nohup dockerd --host unix://$SOCK >'$LOG' 2>&1 &"
  fi
  for _ in $(seq 1 60); do engine_up && break; sleep 1; done
  engine_up || { say "dockerd did not come up; see $LOG"; tail -n 20 "$LOG" >&2 || true; exit 1; }
fi
say "engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"

if [ "$want_base" = 1 ]; then
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "base image $BASE_TAG present"
  else
    if ! command -v debootstrap >/dev/null 2>&1; then
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    rootfs="$(mktemp -d /tmp/envkit-rootfs.XXXXXX)"
    trap 'as_root rm -rf "$rootfs"' EXIT
    say "debootstrap $SUITE -> $BASE_TAG (about a minute)"
    as_root debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >/dev/null
    # Keep apt small and quiet in images built from this base.
    as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    as_root tar -C "$rootfs" -c . | docker import \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
    say "base image $BASE_TAG built"
  fi
fi
