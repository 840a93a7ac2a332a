#!/usr/bin/env bash
# GPU-machine job of the decode-step design bound (issue 20, docs/GPU.md "Fifteenth session"):
# builds kldq and kldq_bench_step_bound in build-gpu, runs the bound (every variant's us per step
# and share of the bandwidth limit, the copy measured in the same process), then
# generate_check.sh's speed part (kldq eval --speed beside hf_decode.py and the copy bandwidth),
# so that kldq's own steps sit beside the bound in one job: qwen2.5-1.5b only unless
# KLDQ_GEN_SHAPES says otherwise (with the build, the 7B's synthesis and speed runs did not fit a
# 600 s call). Needs ../shared/bench copied to .gpu/bench. Logs to $OUT (or ./gpu-out).
set -uo pipefail
LOG_NAME=step_bound.log
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
build_gpu kldq kldq_bench_step_bound || exit 1
"$ROOT/build-gpu/kldq_bench_step_bound" | tee "$OUT/step_bound.jsonl" "$OUT/bench.jsonl"
KLDQ_GEN_PARITY=0 KLDQ_GEN_EAGER=0 KLDQ_GEN_SHAPES="${KLDQ_GEN_SHAPES:-qwen2.5-1.5b}" \
  bash "$ROOT/scripts/gpu/generate_check.sh"
