#!/usr/bin/env bash
# The project's ONE prepared GPU check: run it on a lent GPU machine (e.g. an H200) in < 9 minutes.
#
#   bash benchmarks/gpu_check.sh            # writes under $OUT if set, else results/gpu/
#
# Needs only python3 with PyTorch (CUDA build), nvidia-ml-py, numpy, typer, rich, pyyaml,
# matplotlib, pytest and jsonschema -- no network, no Docker, no `pip install` of envkit (it
# runs from this checkout).
#
# Every step has a time limit, and the limits of the planned steps add up to no more than
# BUDGET_S (540 s): the script refuses to start otherwise. It never stops at a failing step.
# Each step ends in one status, recorded in summary.json:
#   ok | failed (non-zero exit) | timed_out | skipped (out of budget, or a tool missing, or a
#   gpu test that skipped) | missed_target (ran, but below its target, e.g. MFU < 45%) |
#   not_applicable (a GPU-only step in the CPU dry run)
# The script exits 1 when any step failed, timed out, was skipped or missed its target, and
# summary.json names them ("failed", "skipped", "missed_target").
#
# What only a GPU shows, and the step that exercises it: real pynvml (doctor, bench-matmul
# telemetry), CUDA events (bench-matmul, gpu-tests), pinned copies (bench-memory), NCCL
# init with device_id (bench-allreduce-*), fused AdamW + torch.compile (train-mfu, gpu-tests).
#
# Knobs (the CPU dry run in tests/unit/test_gpu_check.py uses them to prove the control flow):
#   GPU_CHECK_DEVICE=cpu     the same flow on a CPU with tiny sizes; GPU-only steps not_applicable
#   GPU_CHECK_ONLY=a,b       run only these steps (others are left out of the summary)
#   GPU_CHECK_FORCE_FAIL=a   make step a fail (its command is replaced by `false`)
#   GPU_CHECK_FORCE_SKIP=a   treat step a as out of budget
#   GPU_CHECK_FORCE_MISS=a   make step a miss its target (after it ran and passed)
#   GPU_CHECK_PLAN=1         print the plan (steps, limits, their sum) and exit
#   GPU_CHECK_GPUS=N         plan for N GPUs instead of asking torch
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEST=${OUT:-$ROOT/results/gpu}
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-gpu}
BUDGET_S=${BUDGET_S:-540}
ONLY=",${GPU_CHECK_ONLY:-},"
FORCE_FAIL=",${GPU_CHECK_FORCE_FAIL:-},"
FORCE_SKIP=",${GPU_CHECK_FORCE_SKIP:-},"
FORCE_MISS=",${GPU_CHECK_FORCE_MISS:-},"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ -n ${GPU_CHECK_GPUS:-} ]]; then
    GPUS=$GPU_CHECK_GPUS
elif [[ $DEVICE == gpu ]]; then
    GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
else
    GPUS=0
fi

BENCH=("$PY" -m envkit.bench) # timeout(1) runs programs, not shell functions
mapfile -t GPU_TEST_FILES < <(grep -rlE '^(pytestmark = pytest\.mark\.gpu|[[:space:]]*@pytest\.mark\.gpu)\b' tests \
    --include='test_*.py' | sort)

# --- the plan: NAME LIMIT_S TARGET COMMAND... (TARGET: - or the name of a check below) -----
PLAN_NAMES=() PLAN_LIMITS=() PLAN_TARGETS=() PLAN_CMDS=()
add() {
    local name=$1 limit=$2 target=$3
    shift 3
    if [[ $ONLY != ",," && $ONLY != *",$name,"* ]]; then return; fi
    PLAN_NAMES+=("$name") PLAN_LIMITS+=("$limit") PLAN_TARGETS+=("$target")
    PLAN_CMDS+=("$(printf '%q ' "$@")")
}
na() { # a GPU-only step in the CPU dry run
    if [[ $ONLY != ",," && $ONLY != *",$1,"* ]]; then return; fi
    PLAN_NAMES+=("$1") PLAN_LIMITS+=(0) PLAN_TARGETS+=(not_applicable) PLAN_CMDS+=("")
}

if [[ $DEVICE == gpu ]]; then
    add nvidia-smi 10 - nvidia-smi
    # doctor --require-gpu prints the driver, CUDA and torch versions: no separate versions step
    # the real pynvml / driver / CUDA path of every probe; a missing GPU is a failure
    add doctor 40 - "$PY" -m envkit doctor --require-gpu --skip tensorflow --output "$DEST/doctor.json"
    # gpt2-124m in bf16, torch.compile, fused AdamW, flash SDPA: MFU against the matrix's peak
    # (--skip-cycle: the loop itself runs on the GPU in gpu-tests, test_train_gpu.py)
    add train-mfu 140 mfu "$PY" benchmarks/gpu_train_check.py --skip-cycle --out "$DEST/gpu-train-check.json"
    # CUDA events, every dtype the GPU supports, NVML telemetry; 10 s whole-device warm-up first
    add bench-matmul 75 - "${BENCH[@]}" matmul --backend torch --device gpu --preset quick --warmup-s 10 \
        --out "$DEST/bench-matmul.json" --plot "$DEST/bench-matmul.png"
    # envkit accept --quick: a 60 s GEMM soak on every GPU with each product checked and NVML
    # telemetry, D2D plus pinned/pageable H2D/D2H copies (bench memory), the peer matrix, NCCL
    # all-reduce over every GPU (process group bound with device_id), DCGM level 1 where installed.
    # It replaces the separate bench-memory and bench-allreduce steps: it runs the same code.
    accept_s=$((GPUS > 1 ? 125 : 110))
    add accept "$accept_s" - "$PY" -m envkit accept --device gpu --quick --skip doctor --dcgm-level 1 \
        --out "$DEST/accept.json"
    # every gpu-marked test (bench, doctor on the real host, training); a skip here is a failure.
    # Only the files that carry the marker are collected: the rest of the suite imports tools
    # (Docker, Ansible, TensorFlow) a GPU box need not have, and collecting it costs ~30 s.
    add gpu-tests 150 no-skips "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider "${GPU_TEST_FILES[@]}"
    # A GPU host WITH Docker and the NVIDIA runtime (a build host, a provisioned node; not the
    # lent machine, which has no Docker): each CUDA image with --gpus all, doctor
    # --require-gpu and a short matmul (benchmarks/gpu_images_check.sh). Its time comes on top.
    if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
        add gpu-images 480 - env OUT="$DEST/gpu-images" STEP_LIMIT_S=75 bash benchmarks/gpu_images_check.sh
        BUDGET_S=$((BUDGET_S + 480))
    else
        na gpu-images
    fi
else
    na nvidia-smi
    add versions 60 - "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__)'
    add doctor 90 - "$PY" -m envkit doctor --skip tensorflow --output "$DEST/doctor.json"
    na train-mfu
    add bench-matmul 120 - "${BENCH[@]}" matmul --backend torch --device cpu --dtype fp32 --m 128 --warmup 0 \
        --min-time 0 --out "$DEST/bench-matmul.json" --plot "$DEST/bench-matmul.png"
    add bench-memory 60 - "${BENCH[@]}" memory --device cpu --size-mib 64 --out "$DEST/bench-memory.json"
    add bench-allreduce-2cpu 90 - "${BENCH[@]}" allreduce --backend gloo --nproc 2 --max-size 64KiB \
        --out "$DEST/bench-allreduce-2.json"
    # the acceptance sequence on the CPU: a short checked soak, host memory, gloo all-reduce
    add accept 110 - "$PY" -m envkit accept --device cpu --duration 10s --skip doctor --out "$DEST/accept.json"
    na gpu-tests
fi

PLANNED_S=0
for limit in "${PLAN_LIMITS[@]}"; do PLANNED_S=$((PLANNED_S + limit)); done

if [[ ${GPU_CHECK_PLAN:-0} == 1 ]]; then
    files=$(printf '"%s",' "${GPU_TEST_FILES[@]}")
    echo "{\"device\": \"$DEVICE\", \"gpus\": $GPUS, \"budget_s\": $BUDGET_S, \"planned_s\": $PLANNED_S,"
    echo " \"gpu_test_files\": [${files%,}], \"steps\": ["
    for i in "${!PLAN_NAMES[@]}"; do
        ((i > 0)) && echo ","
        printf '{"step": "%s", "limit_s": %s}' "${PLAN_NAMES[$i]}" "${PLAN_LIMITS[$i]}"
    done
    echo "]}"
    exit 0
fi
if ((PLANNED_S > BUDGET_S)); then
    echo "error: the steps' limits add up to ${PLANNED_S}s, over BUDGET_S=${BUDGET_S}s; shorten a step" >&2
    exit 2
fi

mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
: >"$LOG"
START=$(date +%s)
ROWS=() FAILED=() SKIPPED=() MISSED=()

log() { echo "$*" | tee -a "$LOG"; }
record() { # NAME STATUS RC SECONDS LIMIT NOTE
    local note
    note=$(printf '%s' "$6" | tr -d '"\\' | tr '\n\t' '  ')
    ROWS+=("{\"step\": \"$1\", \"status\": \"$2\", \"rc\": $3, \"seconds\": $4, \"limit_s\": $5, \"note\": \"$note\"}")
    case $2 in
    failed | timed_out) FAILED+=("\"$1\"") ;;
    skipped) SKIPPED+=("\"$1\"") ;;
    missed_target) MISSED+=("\"$1\"") ;;
    esac
}

# Targets: a step that ran and exited 0 may still miss what it is for.
check_target() { # TARGET STEP_LOG STEP -> prints a note and returns 1 when missed
    if [[ $FORCE_MISS == *",$3,"* ]]; then
        echo "target missed (forced by GPU_CHECK_FORCE_MISS)"
        return 1
    fi
    case $1 in
    mfu)
        "$PY" - "$DEST/gpu-train-check.json" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
mfu = doc.get("mfu_check", {}).get("mfu")
target = doc.get("target_mfu", 0.45)
if not doc.get("meets_target"):
    print(f"MFU {mfu if mfu is None else f'{mfu:.1%}'} below the target {target:.0%}")
    sys.exit(1)
EOF
        ;;
    no-skips)
        # a gpu test that skips on a GPU host did not check anything; TensorFlow's GPU build
        # is optional beside a CUDA torch, so its skips alone are allowed
        local bad
        bad=$(grep -E '^SKIPPED' "$2" | grep -vi tensorflow || true)
        if [[ -n $bad ]]; then
            echo "gpu-marked tests skipped on a GPU host: $(echo "$bad" | head -3 | tr '\n' ' ')"
            return 1
        fi
        ;;
    esac
    return 0
}

for i in "${!PLAN_NAMES[@]}"; do
    name=${PLAN_NAMES[$i]} limit=${PLAN_LIMITS[$i]} target=${PLAN_TARGETS[$i]}
    if [[ $target == not_applicable ]]; then
        log "=== $name: not applicable on a CPU (GPU_CHECK_DEVICE=cpu)"
        record "$name" not_applicable null 0 0 "GPU only"
        continue
    fi
    left=$((BUDGET_S - ($(date +%s) - START)))
    if [[ $FORCE_SKIP == *",$name,"* ]]; then
        log "=== $name: SKIPPED (GPU_CHECK_FORCE_SKIP)"
        record "$name" skipped null 0 "$limit" "out of budget (forced)"
        continue
    fi
    if ((left < 10)); then
        log "=== $name: SKIPPED (budget of ${BUDGET_S}s spent, ${left}s left)"
        record "$name" skipped null 0 "$limit" "out of budget"
        continue
    fi
    ((limit > left)) && limit=$left
    eval "cmd=(${PLAN_CMDS[$i]})"
    [[ $FORCE_FAIL == *",$name,"* ]] && cmd=(false)
    if ! command -v "${cmd[0]}" >/dev/null 2>&1; then
        log "=== $name: SKIPPED (${cmd[0]} not found)"
        record "$name" skipped null 0 "$limit" "${cmd[0]} not found"
        continue
    fi
    if [[ $name == gpu-tests ]] && ! "$PY" -c 'import pytest, jsonschema' 2>/dev/null; then
        log "=== $name: SKIPPED (pytest or jsonschema missing)"
        record "$name" skipped null 0 "$limit" "pytest or jsonschema missing"
        continue
    fi
    step_log="$DEST/.step-$name.log"
    log "=== $name (limit ${limit}s): ${cmd[*]}"
    t0=$(date +%s)
    timeout --kill-after=5 "$limit" "${cmd[@]}" 2>&1 | tee "$step_log" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    spent=$(($(date +%s) - t0))
    if ((rc == 124 || rc == 137)); then
        status=timed_out note="killed at its ${limit}s limit"
    elif ((rc != 0)); then
        status=failed note="exit status $rc"
    elif note=$(check_target "$target" "$step_log" "$name"); then
        status=ok note=""
    else
        status=missed_target
    fi
    rm -f "$step_log"
    log "=== $name: $status (rc=$rc) in ${spent}s${note:+: $note}"
    record "$name" "$status" "$rc" "$spent" "$limit" "$note"
done

# --- summary --------------------------------------------------------------------
join() { local IFS=,; echo "$*"; }
if ((${#FAILED[@]} + ${#SKIPPED[@]} + ${#MISSED[@]})); then VERDICT=fail; else VERDICT=ok; fi
{
    echo "{\"device\": \"$DEVICE\", \"gpus\": $GPUS, \"budget_s\": $BUDGET_S, \"planned_s\": $PLANNED_S,"
    echo " \"seconds\": $(($(date +%s) - START)), \"status\": \"$VERDICT\","
    echo " \"failed\": [$(join "${FAILED[@]}")], \"skipped\": [$(join "${SKIPPED[@]}")],"
    echo " \"missed_target\": [$(join "${MISSED[@]}")],"
    echo " \"steps\": [$(join "${ROWS[@]}")]}"
} >"$DEST/summary.json"
log "=== total $(($(date +%s) - START))s; $VERDICT; summary in $DEST/summary.json"

# The device tool returns at most 8 files from $OUT: past that, pack the rest in one archive.
mapfile -t FILES < <(cd "$DEST" && find . -maxdepth 2 -type f ! -name summary.json ! -name gpu_check.log | sort)
if ((${#FILES[@]} > 6)); then
    (cd "$DEST" && tar -czf files.tar.gz "${FILES[@]}" && rm -f "${FILES[@]}")
    log "=== packed ${#FILES[@]} files into $DEST/files.tar.gz"
fi
[[ $VERDICT == ok ]] || exit 1
exit 0
