#!/usr/bin/env bash
# Sets up if needed, builds, and runs the test suite (the CPU tests; the CUDA tests run on a GPU
# machine through scripts/gpu/check.sh). Fails when any test fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KLDQ_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cmake --build "$BUILD" -j"$(nproc)"
# One entry per test file. Serial by default: each entry already uses every core (libtorch), and
# on the 2-core CI machine `-j2` measured slower (oversubscribed); extra arguments go to ctest.
ctest --test-dir "$BUILD" -L cpu --output-on-failure "$@"
