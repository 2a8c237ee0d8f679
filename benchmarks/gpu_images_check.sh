#!/usr/bin/env bash
# The prepared GPU step for the CUDA IMAGES: run it on a GPU host WITH Docker and the
# NVIDIA Container Toolkit (the lent H200 machine has no Docker: this is for a GPU build
# host or a provisioned node). For each CUDA image of the matrix:
#
#   1. docker run --gpus all IMAGE envkit doctor --require-gpu     (exit 0: GPU usable)
#   2. docker run --gpus all IMAGE envkit bench matmul ... --device gpu   (a short bench)
#
#   bash benchmarks/gpu_images_check.sh [IMAGE ...]    # default: every CUDA row's tag
#
# Results (doctor JSON, bench JSON, logs, summary.json) go under $OUT if set, else
# results/gpu-images/. Every step has a time limit (STEP_LIMIT_S, default 240 s); the
# script never stops at a failing step and exits 1 when any step failed or timed out.
# GPU_IMAGES_DRY_RUN=1 prints the plan (images, commands, limits) and exits 0.
set -uo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$here/results/gpu-images}"
limit="${STEP_LIMIT_S:-240}"
docker="${DOCKER:-docker}"
mkdir -p "$out"

if [ "$#" -gt 0 ]; then
  images=("$@")
else
  mapfile -t images < <(cd "$here" && python3 - <<'PY'
import yaml
rows = yaml.safe_load(open("envkit/data/matrix.yaml"))["images"]
for row in rows:
    if row.get("cuda"):
        print(row["tag"] + " " + row["framework"])
PY
  )
fi

backend_of() {  # tag [framework] -> the bench backend
  case "$2" in tensorflow) echo tensorflow ;; *) echo torch ;; esac
}

steps=()
for entry in "${images[@]}"; do
  tag="${entry%% *}"
  fw="${entry#* }"
  [ "$fw" = "$entry" ] && fw="$(case "$tag" in *tensorflow*) echo tensorflow ;; *) echo pytorch ;; esac)"
  name="$(echo "$tag" | tr '/:' '__')"
  backend="$(backend_of "$tag" "$fw")"
  steps+=("$name-doctor|$tag|envkit doctor --require-gpu --json --output /out/$name-doctor.json")
  steps+=("$name-bench|$tag|envkit bench matmul --backend $backend --device gpu --dtype fp32,bf16 --m 4096 --warmup 0.2 --min-time 0.5 --out /out/$name-bench.json")
done

if [ "${GPU_IMAGES_DRY_RUN:-0}" = 1 ]; then
  printf '%s\n' "${steps[@]}"
  echo "limit per step: ${limit} s; steps: ${#steps[@]}"
  exit 0
fi

status=0
summary="$out/summary.json"
echo "{" > "$summary.tmp"
first=1
for step in "${steps[@]}"; do
  IFS='|' read -r name tag cmd <<<"$step"
  log="$out/$name.log"
  started=$(date +%s)
  # shellcheck disable=SC2086  # cmd is a word list on purpose
  timeout --kill-after=10 "$limit" "$docker" run --rm --gpus all --shm-size 1g \
    --user "$(id -u):$(id -g)" -v "$out:/out" "$tag" $cmd >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - started ))
  case $rc in
    0) result=ok ;;
    124|137) result=timed_out; status=1 ;;
    *) result=failed; status=1 ;;
  esac
  echo "$name: $result ($took s, exit $rc) -> $log"
  [ $first = 1 ] || echo "," >> "$summary.tmp"
  first=0
  printf '  "%s": {"image": "%s", "status": "%s", "exit": %d, "seconds": %d}' \
    "$name" "$tag" "$result" "$rc" "$took" >> "$summary.tmp"
done
printf '\n}\n' >> "$summary.tmp"
mv "$summary.tmp" "$summary"
echo "summary: $summary"
exit $status
