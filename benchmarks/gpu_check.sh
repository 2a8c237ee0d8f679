#!/usr/bin/env bash
# The project's ONE prepared GPU check: run it on a lent GPU machine (e.g. an H200) in < 9 minutes.
#
#   bash benchmarks/gpu_check.sh            # writes under $OUT if set, else results/gpu/
#
# Needs only python3 with PyTorch (CUDA build), nvidia-ml-py, numpy, typer, rich, pyyaml and
# matplotlib -- no network, no Docker, no `pip install` of envkit (it runs from this checkout).
# Each step is one `step NAME SECONDS COMMAND...` line: add training/doctor steps the same way.
# Every step's exit status and duration land in summary.json; the script never stops at a
# failing step, and skips the rest once BUDGET_S is spent. GPU_CHECK_DEVICE=cpu runs the same
# flow on a CPU with tiny sizes (to check the script itself where no GPU is lent).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEST=${OUT:-$ROOT/results/gpu}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-gpu}
BUDGET_S=${BUDGET_S:-540}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$DEST/gpu_check.log"
: >"$LOG"
START=$(date +%s)
SUMMARY_ROWS=()

log() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: run COMMAND with a timeout, log it, record rc and seconds.
step() {
    local name=$1 limit=$2 rc t0 spent left
    shift 2
    spent=$(($(date +%s) - START))
    left=$((BUDGET_S - spent))
    if ((left < 10)); then
        log "=== $name: SKIPPED (budget of ${BUDGET_S}s spent)"
        SUMMARY_ROWS+=("{\"step\": \"$name\", \"rc\": null, \"seconds\": 0, \"skipped\": true}")
        return
    fi
    ((limit > left)) && limit=$left
    log "=== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    log "=== $name: rc=$rc in $(($(date +%s) - t0))s"
    SUMMARY_ROWS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - t0)), \"skipped\": false}")
}

BENCH=("$PY" -m envkit.bench) # timeout(1) runs programs, not shell functions

# --- machine ------------------------------------------------------------------
if [[ $DEVICE == gpu ]]; then
    step nvidia-smi 20 nvidia-smi
fi
step versions 60 "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)

# --- doctor (issue 2) ---------------------------------------------------------
# The real NVML/driver/CUDA path of every probe; --require-gpu makes a missing GPU a failure.
if [[ $DEVICE == gpu ]]; then
    step doctor 90 "$PY" -m envkit doctor --require-gpu --skip tensorflow --output "$DEST/doctor.json"
else
    step doctor 90 "$PY" -m envkit doctor --skip tensorflow --output "$DEST/doctor.json"
fi

# --- training (issue 4) --------------------------------------------------------
# gpt2-124m in bf16 with torch.compile: tokens/s and MFU against the matrix's peak (target >= 45%).
if [[ $DEVICE == gpu ]]; then
    step train-mfu 180 "$PY" benchmarks/gpu_train_check.py --out "$DEST/gpu-train-check.json"
else
    log "=== train-mfu: SKIPPED (gpu_train_check.py measures a CUDA GPU; the CPU path is tested by make test)"
fi

# --- bench (issue 3) ----------------------------------------------------------
if [[ $DEVICE == gpu ]]; then
    # quick preset, every dtype the GPU supports (fp64 fp32 tf32 fp16 bf16 fp8), every GPU
    step bench-matmul 150 "${BENCH[@]}" matmul --backend torch --device gpu --preset quick \
        --out "$DEST/bench-matmul.json" --plot "$DEST/bench-matmul.png"
    step bench-memory 60 "${BENCH[@]}" memory --device gpu --out "$DEST/bench-memory.json"
    step bench-allreduce-1gpu 90 "${BENCH[@]}" allreduce --backend nccl --nproc 1 --out "$DEST/bench-allreduce-1.json"
    if ((GPUS > 1)); then
        step bench-allreduce-all 120 "${BENCH[@]}" allreduce --backend nccl --nproc "$GPUS" \
            --out "$DEST/bench-allreduce-$GPUS.json"
    fi
    # envkit's quick preset against mamf-finder's method on the same shapes (target >= 0.95)
    step bench-vs-mamf 120 "$PY" benchmarks/bench_overhead.py --device gpu --out "$DEST/bench-vs-mamf.json"
    if "$PY" -c 'import jsonschema, pytest' 2>/dev/null; then
        step bench-gpu-tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/integration/test_bench_gpu.py
    else
        log "=== bench-gpu-tests: SKIPPED (jsonschema or pytest missing; the JSON files above hold the same facts)"
    fi
else
    step bench-matmul 120 "${BENCH[@]}" matmul --backend torch --device cpu --dtype fp32 --m 128 --warmup 0 \
        --min-time 0 --out "$DEST/bench-matmul.json" --plot "$DEST/bench-matmul.png"
    step bench-memory 60 "${BENCH[@]}" memory --device cpu --size-mib 64 --out "$DEST/bench-memory.json"
    step bench-allreduce-2cpu 90 "${BENCH[@]}" allreduce --backend gloo --nproc 2 --max-size 64KiB \
        --out "$DEST/bench-allreduce-2.json"
fi

# --- summary --------------------------------------------------------------------
{
    echo "{\"device\": \"$DEVICE\", \"gpus\": $GPUS, \"seconds\": $(($(date +%s) - START)), \"steps\": ["
    (IFS=,; echo "${SUMMARY_ROWS[*]}")
    echo "]}"
} >"$DEST/summary.json"
log "=== total $(($(date +%s) - START))s; summary in $DEST/summary.json"

# The device tool returns at most 8 files from $OUT: past that, pack the rest in one archive.
mapfile -t FILES < <(cd "$DEST" && find . -maxdepth 2 -type f ! -name summary.json ! -name gpu_check.log | sort)
if ((${#FILES[@]} > 6)); then
    (cd "$DEST" && tar -czf files.tar.gz "${FILES[@]}" && rm -f "${FILES[@]}")
    log "=== packed ${#FILES[@]} files into $DEST/files.tar.gz"
fi
# a failing step fails the check
grep -q '"rc": [1-9]' "$DEST/summary.json" && exit 1
exit 0
