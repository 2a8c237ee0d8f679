#!/bin/bash
# Add the Fabric Manager and DCGM stand-ins to the CUDA repository stand-in
# (build-cuda-repo.sh builds the driver packages first), then index and sign
# the whole repository again with a fresh key served under NVIDIA's file name.
#
# Shapes of NVIDIA's CUDA repository (debian12/x86_64, ubuntu2x04/x86_64):
#   - nvidia-fabricmanager-<branch> and libnvidia-nscq-<branch> at the driver's
#     version, one of each per driver version, no dependency on the driver:
#     matching them to the driver is the installer's job (apt picks the newest);
#   - nvlsm (the NVLink subnet manager) versioned by date, not by driver;
#   - DCGM 4 as datacenter-gpu-manager-4-core (nvidia-dcgm.service running
#     nv-hostengine) + -4-cuda<major> (the diagnostics), epoch 1; DCGM 3's
#     datacenter-gpu-manager beside it, which a DCGM 4 install must not take.
# Usage: build-cuda-extras.sh <root> "<driver versions>" "<dcgm 4 versions>"
set -euo pipefail
root="$1"; drivers="$2"; dcgms="$3"
repo="$root/compute/cuda/repos/debian12/x86_64"
mkdir -p "$repo"

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
  dpkg-deb --root-owner-group --build "$stage" "$repo/${name}_${version//:/%3a}_amd64.deb" >/dev/null
  rm -rf "$stage"
}
unit() {  # name description exec -> a systemd unit staged in $stage
  mkdir -p "$stage/usr/lib/systemd/system"
  printf '[Unit]\nDescription=%s\n\n[Service]\nType=simple\nExecStart=%s\n\n[Install]\nWantedBy=multi-user.target\n' \
    "$2" "$3" > "$stage/usr/lib/systemd/system/$1.service"
}
daemon() {  # path: a stand-in daemon that only stays up (no GPU, no NVSwitch here)
  mkdir -p "$stage$(dirname "$1")"
  printf '#!/bin/sh\nexec sleep infinity\n' > "$stage$1"
  chmod 0755 "$stage$1"
}

for v in $drivers; do
  up="${v%-*}"; branch="${up%%.*}"
  stage="$(mktemp -d)"
  daemon /usr/bin/nv-fabricmanager
  mkdir -p "$stage/usr/share/nvidia/nvswitch"
  echo "# fabricmanager.cfg $up stand-in" > "$stage/usr/share/nvidia/nvswitch/fabricmanager.cfg"
  unit nvidia-fabricmanager "NVIDIA fabric manager service" \
    "/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg"
  build "nvidia-fabricmanager-$branch" "$v" "" "Fabric Manager for NVSwitch based systems"
  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/lib/x86_64-linux-gnu"
  echo "nscq $up stand-in" > "$stage/usr/lib/x86_64-linux-gnu/libnvidia-nscq.so.$up"
  build "libnvidia-nscq-$branch" "$v" "" "NVSwitch Configuration and Query library"
done

stage="$(mktemp -d)"
daemon /opt/nvidia/nvlsm/sbin/nvlsm
build nvlsm "2025.06.10-1" "" "NVIDIA NVLink Subnet Manager"

for v in $dcgms; do
  stage="$(mktemp -d)"
  daemon /usr/bin/nv-hostengine
  printf '#!/bin/sh\necho "dcgmi stand-in %s"\n' "$v" > "$stage/usr/bin/dcgmi"
  chmod 0755 "$stage/usr/bin/dcgmi"
  unit nvidia-dcgm "NVIDIA DCGM service" "/usr/bin/nv-hostengine -n --service-account nvidia-dcgm"
  build datacenter-gpu-manager-4-core "$v" "Conflicts: datacenter-gpu-manager" "NVIDIA DCGM 4 (core)"
  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/libexec/datacenter-gpu-manager-4/plugins/cuda13"
  build datacenter-gpu-manager-4-cuda13 "$v" "Depends: datacenter-gpu-manager-4-core (= $v)" \
    "NVIDIA DCGM 4 (CUDA 13 diagnostics)"
done
stage="$(mktemp -d)"
build datacenter-gpu-manager "1:3.3.9" "" "NVIDIA DCGM 3"

export GNUPGHOME; GNUPGHOME="$(mktemp -d)"
gpg --batch --quiet --passphrase '' --quick-gen-key "envkit test CUDA mirror <cuda-mirror@envkit.invalid>" ed25519 sign never
gpg --armor --export > "$repo/3bf863cc.pub"
cd "$repo"
rm -f InRelease Release Release.gpg
apt-ftparchive packages . > Packages
gzip -9kf Packages
apt-ftparchive -o APT::FTPArchive::Release::Origin="NVIDIA" -o APT::FTPArchive::Release::Label="NVIDIA CUDA" \
  release . > "$GNUPGHOME/Release"
mv "$GNUPGHOME/Release" Release
gpg --batch --yes --clearsign -o InRelease Release
gpg --batch --yes -abs -o Release.gpg Release
rm -rf "$GNUPGHOME"
