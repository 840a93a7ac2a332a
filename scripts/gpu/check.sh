#!/usr/bin/env bash
# GPU-machine check: configure against that machine's own torch (no network there), build, run
# the CUDA-tagged tests, the transformers parity check and the forward benchmarks side by side
# with the Hugging Face peer. Everything is logged to $OUT (or ./gpu-out).
#
#   scripts/gpu/check.sh [--quick]      --quick: tests and parity only, no benchmarks
# Needs ../shared/bench copied to .gpu/bench (the peer script) and, optionally,
# ../shared/data/models/stories260k-qwen2 to .gpu/data/ (a real trained model for the bf16
# parity check); see docs/GPU.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
PY="${KLDQ_GPU_PYTHON:-$(command -v python3)}"
BUILD="$ROOT/build-gpu"
MODELS="${KLDQ_GPU_MODELS:-/tmp/kldq-models}"
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
log() { echo "== $*" | tee -a "$OUT/check.log"; }
fail=0

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
TORCH_PREFIX="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
log "torch $("$PY" -c 'import torch; print(torch.__version__)')"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKLDQ_CUDA=ON \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DKLDQ_PYTHON="$PY" >"$OUT/configure.log" 2>&1 \
    || { log "configure failed"; tail -30 "$OUT/configure.log"; exit 1; }
fi
cmake --build "$BUILD" -j"$(nproc)" >"$OUT/build.log" 2>&1 || { log "build failed"; grep -m20 -A5 error "$OUT/build.log"; exit 1; }
log "build ok"

ctest --test-dir "$BUILD" --output-on-failure >"$OUT/ctest.log" 2>&1 || fail=1
log "ctest (cpu + cuda): $(tail -3 "$OUT/ctest.log" | head -1)"
if [ $fail -ne 0 ]; then
  grep -B3 -A12 "FAILED" "$OUT/ctest.log" | head -80
  if grep -q SEGFAULT "$OUT/ctest.log" && command -v cuda-gdb >/dev/null; then
    readelf -d "$BUILD/tests/kldq_tests" | grep NEEDED | head -4
    ninja -C "$BUILD" -t commands tests/kldq_tests | tail -1 | cut -c1-600
    cuda-gdb -batch -ex run -ex bt --args "$BUILD/tests/kldq_tests" 2>&1 | grep -E "^#" | head -15
  fi
fi

K="$BUILD/kldq"
mkdir -p "$MODELS"
synth() { [ -f "$MODELS/$1/model.safetensors" ] || "$K" -q synth --shape "$1" -o "$MODELS/$1" --device cuda --force; }
synth qwen2.5-1.5b || { log "synth failed"; exit 1; }
STORIES="$ROOT/.gpu/data/stories260k-qwen2"
EXTRA=""; [ -d "$STORIES" ] && EXTRA="--model $STORIES"
"$PY" "$ROOT/scripts/gpu/hf_parity.py" --kldq "$K" --model "$MODELS/qwen2.5-1.5b" $EXTRA --out "$OUT/parity.json" \
  2>>"$OUT/check.log" | tee -a "$OUT/check.log" || fail=1

if [ $QUICK -eq 0 ]; then
  BENCH="$ROOT/.gpu/bench/hf_baseline.py"
  for shape in qwen2.5-1.5b qwen2.5-7b; do
    synth "$shape" || { log "synth $shape failed"; exit 1; }
    log "forward benchmark $shape (8 x 512, logits), kldq then transformers, same GPU"
    "$BUILD/kldq_bench" --model "$MODELS/$shape" --seqs 64 --batch 8 --seq-len 512 --device cuda \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
    [ -f "$BENCH" ] && "$PY" "$BENCH" --shape "$shape" --calib-seqs 64 --batch 8 --seq-len 512 --layers 1 \
      2>/dev/null | grep -E '"eval_forward"|peak_mem' | sed "s/^/{\"peer\":\"hf\",\"shape\":\"$shape\",\"line\":/; s/$/}/" \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
  done
fi
log "done (fail=$fail)"
exit $fail
