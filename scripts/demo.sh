#!/usr/bin/env bash
# Sets up if needed, builds, and runs the main job on the embedded default: a tiny random
# Qwen2-architecture checkpoint (kldq synth) and its inspection (kldq inspect).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KLDQ_BUILD_DIR:-$ROOT/build}"
OUT="${KLDQ_DEMO_DIR:-$ROOT/results/demo}"
"$ROOT/scripts/setup.sh"
cmake --build "$BUILD" -j"$(nproc)" --target kldq
mkdir -p "$OUT"
"$BUILD/kldq" synth --shape tiny -o "$OUT/tiny-qwen2" --force
"$BUILD/kldq" inspect "$OUT/tiny-qwen2"
