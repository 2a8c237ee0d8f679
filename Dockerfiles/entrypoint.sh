#!/bin/sh
# Image entrypoint, run under tini (PID 1): adapt to the calling user, warn when
# /dev/shm is too small for data-loader workers, then exec the command so it
# receives signals directly.
#
# Any uid may run the image (`docker run --user "$(id -u):$(id -g)"`, so files
# in a bind-mounted run directory belong to the host user): HOME and /workspace
# are writable by every uid, and a uid without a passwd entry still gets a
# user name (getpass, torch and TensorFlow caches ask for one).
#
# PyTorch DataLoader workers and tf.data pass batches through shared memory;
# Docker's default /dev/shm is 64 MiB, and workers then die with "bus error".
# ENVKIT_SHM_MIN_MB (default 1024) sets the threshold; 0 disables the check.
set -eu

if ! id -un >/dev/null 2>&1; then
  export USER="${USER:-envkit-$(id -u)}"
  export LOGNAME="${LOGNAME:-$USER}"
fi
if [ ! -w "${HOME:-/nonexistent}" ]; then
  HOME="$(mktemp -d "/tmp/home-$(id -u).XXXXXX")"
  export HOME
fi

min_mb="${ENVKIT_SHM_MIN_MB:-1024}"
if [ "$min_mb" -gt 0 ] && [ -d /dev/shm ]; then
  shm_kb="$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 { print $2 }')"
  if [ -n "$shm_kb" ] && [ "$shm_kb" -lt $((min_mb * 1024)) ]; then
    echo "envkit: WARNING: /dev/shm is $((shm_kb / 1024)) MiB (< ${min_mb} MiB); data-loader workers may crash." \
      "Run the container with --shm-size 1g (or --ipc host)." >&2
  fi
fi

if [ "$#" -eq 0 ]; then
  set -- bash
fi
exec "$@"
