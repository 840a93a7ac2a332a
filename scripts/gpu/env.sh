# Sourced by the GPU scripts: paths of the repository, the output folder ($OUT, created), python,
# the GPU build's binary, synthesized models, the copy of ../shared/data and the peers, and log()
# (a "== " line on stdout and in $OUT/$LOG_NAME, check.log unless the script sets LOG_NAME first).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT"
PY="${KLDQ_GPU_PYTHON:-$(command -v python3)}"
K="$ROOT/build-gpu/kldq"
MODELS="${KLDQ_GPU_MODELS:-/tmp/kldq-models}"
SHARED="$ROOT/.gpu/shared"
BENCH="$ROOT/.gpu/bench"
log() { echo "== $*" | tee -a "$OUT/${LOG_NAME:-check.log}"; }

# Configures build-gpu against this machine's torch (once; there is no network there) and builds
# the named targets (all when none are named); logs to $OUT/configure.log and $OUT/build.log.
# Returns 1, with the errors logged, when either fails.
build_gpu() {
  local build="$ROOT/build-gpu" prefix targets=()
  if [ ! -f "$build/CMakeCache.txt" ]; then
    prefix="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
    log "torch $("$PY" -c 'import torch; print(torch.__version__)')"
    cmake -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKLDQ_CUDA=ON \
      -DCMAKE_PREFIX_PATH="$prefix" -DKLDQ_PYTHON="$PY" >"$OUT/configure.log" 2>&1 \
      || { log "configure failed"; tail -30 "$OUT/configure.log"; return 1; }
  fi
  for t in "$@"; do targets+=(--target "$t"); done
  cmake --build "$build" -j"$(nproc)" "${targets[@]}" >"$OUT/build.log" 2>&1 \
    || { log "build failed"; grep -m20 -A5 error "$OUT/build.log"; return 1; }
  log "build ok"
}
