#!/bin/sh
# Make a CUDA_HOME out of the nvidia-* wheels of a venv (cuda-devel images).
#
#   cuda_home.sh VENV DEST
#
# PyPI's nvcc, headers and runtime land in one tree (site-packages/nvidia/cu13/
# {bin,include,lib,nvvm}); nvcc finds its own headers relative to itself. What
# tools expect of a CUDA_HOME is added as links: DEST/{bin,include,nvvm,lib,lib64}
# and the unversioned library names a linker asks for (-lcudart needs
# libcudart.so; the wheels ship only libcudart.so.13).
set -eu

venv="$1"
dest="$2"
nvcc="$(find "$venv" -path '*/nvidia/*/bin/nvcc' -type f | head -n 1)"
if [ -z "$nvcc" ]; then
  echo "cuda_home.sh: no nvidia/*/bin/nvcc under $venv; the row's lock needs nvidia-cuda-nvcc" >&2
  exit 1
fi
top="$(dirname "$(dirname "$nvcc")")"
mkdir -p "$dest"
for dir in bin include nvvm lib; do
  if [ -e "$top/$dir" ]; then ln -s "$top/$dir" "$dest/$dir"; fi
done
ln -s "$top/lib" "$dest/lib64"
for so in "$top"/lib/lib*.so.*; do
  plain="${so%%.so.*}.so"
  if [ ! -e "$plain" ]; then ln -s "$(basename "$so")" "$plain"; fi
done
"$dest/bin/nvcc" --version
