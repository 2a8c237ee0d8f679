#!/bin/bash
# Build the stand-in for NVIDIA's CUDA apt repository (the driver packages of
# developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64), the way an
# air-gapped site's mirror holds it: a flat repository (suite "/") at the same
# path, signed with the mirror's own key (InRelease + Release.gpg), the ASCII
# key served beside it under NVIDIA's file name (3bf863cc.pub).
#
# The packages are empty stand-ins (no GPU, no kernel module here) with the
# dependency SHAPES of the real ones, for two driver branches at once (e.g.
# 580.95.05-1 and 590.44.01-1), because the shapes are what breaks a first run:
#   - cuda-drivers-<branch> depends on its components with a lower bound only
#     (nvidia-driver-cuda (>= 580.95.05)): with 590 in the repository, apt
#     installs 590 components under a "580" metapackage, and holding the
#     metapackage holds nothing;
#   - nvidia-driver-cuda pins libcuda1/nvidia-smi exactly but takes any
#     nvidia-persistenced, and libcuda1 only RECOMMENDS the kernel module of
#     its version (the role installs without recommends);
#   - nvidia-driver-pinning-<branch> ships an apt preferences file that keeps
#     the branch (NVIDIA's version-locking package);
#   - nvidia-kernel-dkms / nvidia-kernel-open-dkms provide nvidia-kernel-<version>
#     and conflict with each other, as the real flavours do.
# Usage: build-cuda-repo.sh <root> <version>...   (versions like 580.95.05-1)
set -euo pipefail
root="$1"; shift
versions=("$@")
repo="$root/compute/cuda/repos/debian12/x86_64"
mkdir -p "$repo"
export GNUPGHOME; GNUPGHOME="$(mktemp -d)"
gpg --batch --quiet --passphrase '' --quick-gen-key "envkit test CUDA mirror <cuda-mirror@envkit.invalid>" ed25519 sign never
gpg --armor --export > "$repo/3bf863cc.pub"

# Every package is built from one control stanza; files staged under $stage.
build() {  # name version "control lines" description
  local name="$1" version="$2" extra="$3" desc="$4"
  mkdir -p "$stage/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: amd64"
    echo "Maintainer: envkit tests <tests@envkit.invalid>"
    [ -n "$extra" ] && printf '%s\n' "$extra"
    echo "Section: NVIDIA"
    echo "Priority: optional"
    echo "Description: $desc (envkit test stand-in)"
  } > "$stage/DEBIAN/control"
  dpkg-deb --root-owner-group --build "$stage" "$repo/${name}_${version}_amd64.deb" >/dev/null
  rm -rf "$stage"
}

for v in "${versions[@]}"; do
  up="${v%-*}"          # upstream version: 580.95.05
  branch="${up%%.*}"    # driver branch: 580
  stamp() {             # a file naming the package and version, for the verifiers
    mkdir -p "$stage/usr/share/doc/$1"
    echo "$1 $v stand-in" > "$stage/usr/share/doc/$1/envkit-standin"
  }

  for pkg in firmware-nvidia-gsp libnvidia-ml1 libnvidia-cfg1; do
    stage="$(mktemp -d)"; stamp "$pkg"
    build "$pkg" "$v" "" "NVIDIA driver component $pkg"
  done

  stage="$(mktemp -d)"; stamp nvidia-kernel-dkms
  mkdir -p "$stage/usr/src/nvidia-$up"
  printf 'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="%s"\n' "$up" > "$stage/usr/src/nvidia-$up/dkms.conf"
  build nvidia-kernel-dkms "$v" "Depends: firmware-nvidia-gsp (= $v)
Provides: nvidia-kernel-$up
Conflicts: nvidia-kernel-open-dkms" "NVIDIA binary kernel module DKMS source"

  stage="$(mktemp -d)"; stamp nvidia-kernel-open-dkms
  mkdir -p "$stage/usr/src/nvidia-$up"
  printf 'PACKAGE_NAME="nvidia"\nPACKAGE_VERSION="%s"\n' "$up" > "$stage/usr/src/nvidia-$up/dkms.conf"
  build nvidia-kernel-open-dkms "$v" "Depends: firmware-nvidia-gsp (= $v)
Provides: nvidia-kernel-$up
Conflicts: nvidia-kernel-dkms" "NVIDIA open GPU kernel module DKMS source"

  stage="$(mktemp -d)"; stamp libcuda1
  build libcuda1 "$v" "Depends: libnvidia-ml1 (= $v)
Recommends: nvidia-kernel-dkms (= $v) | nvidia-kernel-$up" "NVIDIA CUDA Driver Library"

  stage="$(mktemp -d)"; stamp nvidia-smi
  build nvidia-smi "$v" "Depends: libnvidia-ml1 (= $v)" "NVIDIA System Management Interface"

  # Versioned with the driver in NVIDIA's repository, but depended on without a version.
  stage="$(mktemp -d)"; stamp nvidia-persistenced
  mkdir -p "$stage/usr/lib/systemd/system" "$stage/usr/bin"
  printf '#!/bin/sh\nexec sleep infinity\n' > "$stage/usr/bin/nvidia-persistenced"
  chmod 0755 "$stage/usr/bin/nvidia-persistenced"
  # Ubuntu's unit shape: persistence mode off unless a drop-in says otherwise.
  printf '[Unit]\nDescription=NVIDIA Persistence Daemon\nWants=syslog.target\n\n[Service]\nType=simple\nExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose\n\n[Install]\nWantedBy=multi-user.target\n' \
    > "$stage/usr/lib/systemd/system/nvidia-persistenced.service"
  build nvidia-persistenced "$v" "Depends: libnvidia-cfg1" "daemon to maintain persistent software state in the NVIDIA driver"

  stage="$(mktemp -d)"; stamp nvidia-driver-cuda
  build nvidia-driver-cuda "$v" "Depends: libcuda1 (= $v), nvidia-smi (= $v), libnvidia-cfg1 (= $v), nvidia-persistenced" \
    "NVIDIA driver CUDA integration components (compute only)"

  # The branch metapackage: lower bounds only, the shape that lets 590 in.
  stage="$(mktemp -d)"
  build "cuda-drivers-$branch" "$v" "Depends: nvidia-driver-cuda (>= $up), nvidia-kernel-dkms (>= $up)" \
    "CUDA Driver meta-package, branch-specific"

  # NVIDIA's version-locking package for the branch.
  stage="$(mktemp -d)"
  mkdir -p "$stage/etc/apt/preferences.d"
  printf 'Package: *nvidia* libcuda* libnvidia* cuda-drivers*\nPin: version %s.*\nPin-Priority: 1000\n' "$branch" \
    > "$stage/etc/apt/preferences.d/nvidia-driver-pinning-$branch"
  build "nvidia-driver-pinning-$branch" "$v" "" "Pin the NVIDIA driver to branch $branch"
done

cd "$repo"
apt-ftparchive packages . > Packages
gzip -9kf Packages
# Written aside first: a Release inside the directory would list itself.
apt-ftparchive -o APT::FTPArchive::Release::Origin="NVIDIA" -o APT::FTPArchive::Release::Label="NVIDIA CUDA" \
  release . > "$GNUPGHOME/Release"
mv "$GNUPGHOME/Release" Release
gpg --batch --yes --clearsign -o InRelease Release
gpg --batch --yes -abs -o Release.gpg Release
rm -rf "$GNUPGHOME"
