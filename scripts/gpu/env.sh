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
