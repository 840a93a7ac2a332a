#!/usr/bin/env bash
# Sets up if needed, builds, and runs the main job: the demo experiment (configs/demo.yaml,
# Experiment 1 of the reference study on the embedded trained model models/wikitext-qwen2-4m),
# then its report (tables, and plots when matplotlib is present) in results/demo/report/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KLDQ_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cmake --build "$BUILD" -j"$(nproc)" --target kldq
cd "$ROOT"
"$BUILD/kldq" run configs/demo.yaml "$@"
"$BUILD/kldq" report results/demo >/dev/null
echo "tables and plots: $ROOT/results/demo/report/"
