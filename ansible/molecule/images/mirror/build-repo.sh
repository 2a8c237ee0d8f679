#!/bin/bash
# Build the stand-in for NVIDIA's libnvidia-container apt repository, the way
# an air-gapped site's mirror holds it: a flat repository (suite "/") at the
# same path as nvidia.github.io, signed with the mirror's own key (InRelease +
# Release.gpg), the ASCII key served beside it as `gpgkey`.
#
# Four packages, each at two versions, with the real inter-package
# dependencies, so pinning all four together and upgrading them is exercised.
# The binaries are stand-ins (no GPU here); nvidia-ctk edits daemon.json as
# NVIDIA's does. Usage: build-repo.sh <root> <version>...
set -euo pipefail
root="$1"; shift
versions=("$@")
repo="$root/libnvidia-container/stable/deb/amd64"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$repo"
export GNUPGHOME; GNUPGHOME="$(mktemp -d)"
gpg --batch --quiet --passphrase '' --quick-gen-key "envkit test mirror <mirror@envkit.invalid>" ed25519 sign never
gpg --armor --export > "$root/libnvidia-container/gpgkey"

build() {  # name version depends description; files staged in $stage
  local name="$1" version="$2" depends="$3" desc="$4"
  mkdir -p "$stage/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: amd64"
    echo "Maintainer: envkit tests <tests@envkit.invalid>"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Section: utils"
    echo "Priority: optional"
    echo "Description: $desc (envkit test stand-in)"
  } > "$stage/DEBIAN/control"
  [ -f "$stage/etc/nvidia-container-runtime/config.toml" ] && echo /etc/nvidia-container-runtime/config.toml > "$stage/DEBIAN/conffiles"
  dpkg-deb --root-owner-group --build "$stage" "$repo/${name}_${version}_amd64.deb" >/dev/null
  rm -rf "$stage"
}

for v in "${versions[@]}"; do
  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/lib/x86_64-linux-gnu"
  echo "libnvidia-container $v stand-in" > "$stage/usr/lib/x86_64-linux-gnu/libnvidia-container.so.1"
  build libnvidia-container1 "$v" "" "NVIDIA container runtime library"

  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/bin"
  printf '#!/bin/sh\necho "cli-version: %s"\n' "${v%-*}" > "$stage/usr/bin/nvidia-container-cli"
  chmod 0755 "$stage/usr/bin/nvidia-container-cli"
  build libnvidia-container-tools "$v" "libnvidia-container1 (= $v)" "NVIDIA container runtime library (command-line tools)"

  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/bin" "$stage/etc/nvidia-container-runtime"
  sed "s/@VERSION@/${v%-*}/" "$here/nvidia-ctk" > "$stage/usr/bin/nvidia-ctk"
  # A working OCI runtime for Docker to list and use: runc without GPU injection.
  printf '#!/bin/sh\nexec runc "$@"\n' > "$stage/usr/bin/nvidia-container-runtime"
  chmod 0755 "$stage/usr/bin/nvidia-ctk" "$stage/usr/bin/nvidia-container-runtime"
  printf '[nvidia-container-runtime]\nmode = "auto"\n' > "$stage/etc/nvidia-container-runtime/config.toml"
  build nvidia-container-toolkit-base "$v" "" "NVIDIA Container Toolkit Base"

  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/bin"
  printf '#!/bin/sh\nexit 0\n' > "$stage/usr/bin/nvidia-container-runtime-hook"
  chmod 0755 "$stage/usr/bin/nvidia-container-runtime-hook"
  build nvidia-container-toolkit "$v" \
    "nvidia-container-toolkit-base (= $v), libnvidia-container-tools (>= $v), libnvidia-container-tools (<< 2.0.0)" \
    "NVIDIA Container toolkit"
done

cd "$repo"
apt-ftparchive packages . > Packages
gzip -9kf Packages
# Written aside first: a Release inside the directory would list itself.
apt-ftparchive -o APT::FTPArchive::Release::Origin="envkit test mirror" release . > "$GNUPGHOME/Release"
mv "$GNUPGHOME/Release" Release
gpg --batch --yes --clearsign -o InRelease Release
gpg --batch --yes -abs -o Release.gpg Release
rm -rf "$GNUPGHOME"
