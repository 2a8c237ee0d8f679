#!/bin/sh
# Image entrypoint, run under tini (PID 1): warn when /dev/shm is too small for
# data-loader workers, then exec the command so it receives signals directly.
#
# PyTorch DataLoader workers and tf.data pass batches through shared memory;
# Docker's default /dev/shm is 64 MiB, and workers then die with "bus error".
# ENVKIT_SHM_MIN_MB (default 1024) sets the threshold; 0 disables the check.
set -eu

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
