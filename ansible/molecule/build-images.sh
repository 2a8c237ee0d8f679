#!/bin/bash
# Build the local images the Molecule scenarios of ansible/ run on:
#   envkit-molecule/target:1         Debian 12 with systemd (the platform)
#   envkit-molecule/target-docker:1  the same with docker.io installed (a prerequisite, not under test)
#   envkit-molecule/mirror:1         the signed stand-in for NVIDIA's toolkit repository
# FROM the local base image only (nothing is pulled). Each image carries a
# label with the hash of its inputs; it is rebuilt only when they change, so
# running this before every `molecule test` costs a second.
# Usage: ansible/molecule/build-images.sh   (BASE_IMAGE=... to use another base)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
base="${BASE_IMAGE:-${ENVKIT_BASE_IMAGE:-envkit/debian:bookworm}}"
# The toolkit the site scenario starts from before upgrading to the matrix's.
old_toolkit="1.17.7-1"

if ! docker image inspect "$base" >/dev/null 2>&1; then
  echo "error: base image $base is missing; run scripts/docker-engine.sh (or set BASE_IMAGE)" >&2
  exit 2
fi
matrix_toolkit="$(sed -n 's/^ *nvidia_container_toolkit_version: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' \
  "$root/envkit/data/matrix.yaml")"
if [ -z "$matrix_toolkit" ]; then
  echo "error: no ansible.nvidia_container_toolkit_version in envkit/data/matrix.yaml" >&2
  exit 2
fi

build() {  # base tag dockerfile hash-inputs... -- build-args...
  local from="$1" tag="$2" dockerfile="$3"; shift 3
  local from_id
  from_id="$(docker image inspect --format '{{.Id}}' "$from")"
  local inputs=() args=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  args=("$@")
  local want
  want="$( { echo "$from_id" "${args[*]}"; cat "${inputs[@]}"; } | sha256sum | cut -c1-16)"
  local have
  have="$(docker image inspect --format '{{ index .Config.Labels "envkit.molecule.hash" }}' "$tag" 2>/dev/null || true)"
  if [ "$have" = "$want" ]; then
    return 0
  fi
  echo "building $tag" >&2
  local build_args=(--build-arg "BASE_IMAGE=$from")
  for a in "${args[@]}"; do build_args+=(--build-arg "$a"); done
  local log
  if ! log="$(docker build --quiet --label "envkit.molecule.hash=$want" "${build_args[@]}" \
              -t "$tag" -f "$here/images/$dockerfile" "$here/images" 2>&1)"; then
    printf '%s\n' "$log" >&2
    echo "error: building $tag failed (output above)" >&2
    exit 1
  fi
}

build "$base" envkit-molecule/target:1 target.Dockerfile "$here/images/target.Dockerfile" --
build envkit-molecule/target:1 envkit-molecule/target-docker:1 target-docker.Dockerfile \
  "$here/images/target-docker.Dockerfile" --
build "$base" envkit-molecule/mirror:1 mirror.Dockerfile \
  "$here/images/mirror.Dockerfile" "$here/images/mirror/build-repo.sh" "$here/images/mirror/nvidia-ctk" \
  -- "TOOLKIT_VERSIONS=$old_toolkit $matrix_toolkit"
