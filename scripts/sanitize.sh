#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the CPU test suite and the fuzzer, with
# assertions on (no -DNDEBUG: the configuration's flags are replaced), in build-asan/; runs the
# CPU tests and a fuzz pass under both sanitizers. Not part of .ci/run: a second full build on the 2-core CI machine plus the suite at
# sanitizer speed does not fit beside the normal build; the date of the last clean run is in
# docs/ARCHITECTURE.md ("Testing"). Run it on a machine with more cores when you can:
#
#   scripts/sanitize.sh [ctest args]          KLDQ_FUZZ_SECONDS=N for the fuzz pass (default 30)
#   KLDQ_ASAN_SHARDS=16 scripts/sanitize.sh   the Catch2 suite's test cases on 16 parallel workers,
#                                             and every fuzz target at once; logs in build-asan/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KLDQ_ASAN_BUILD_DIR:-$ROOT/build-asan}"
PY="${KLDQ_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  TORCH_PREFIX="$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKLDQ_CUDA=OFF \
    -DKLDQ_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DKLDQ_PYTHON="$PY" \
    -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DKLDQ_FUZZ_SECONDS="${KLDQ_FUZZ_SECONDS:-30}" >/dev/null
fi
cmake --build "$BUILD" -j"$(nproc)"
# libtorch is not instrumented: its allocations are fine to mix, but its exit-time leaks are not
# ours, and container annotations need every user of a container instrumented.
export ASAN_OPTIONS="detect_leaks=0:detect_container_overflow=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
SHARDS="${KLDQ_ASAN_SHARDS:-1}"
if [ "$SHARDS" -le 1 ]; then
  exec ctest --test-dir "$BUILD" -L cpu --output-on-failure "$@"
fi
# Parallel form: one process per test case, handed out dynamically to $SHARDS workers (a static
# split leaves the long CLI cases of one shard running alone); each single-threaded.
export OMP_NUM_THREADS=1
mkdir -p "$BUILD/asan-cases"
rm -f "$BUILD"/asan-cases/*
# Names one per line (Catch2 2: --list-test-names-only; 3: --list-tests -v quiet), with the
# test-spec characters escaped for -f.
LIST=(--list-test-names-only)
"$BUILD/tests/kldq_tests" "${LIST[@]}" >/dev/null 2>&1 || LIST=(--list-tests --verbosity quiet)
"$BUILD/tests/kldq_tests" "~[cuda]" "${LIST[@]}" | sed -e '/^\s*$/d' -e 's/\([],[\\*]\)/\\\1/g' |
  awk -v d="$BUILD/asan-cases" '{ f = sprintf("%s/%03d.name", d, NR); print > f; close(f) }'
pids=()
(ls "$BUILD"/asan-cases/*.name | xargs -P "$SHARDS" -I{} sh -c \
  '"$0" -f "$1" > "${1%.name}.log" 2>&1 || echo "$1" >> "$(dirname "$1")/failed"' \
  "$BUILD/tests/kldq_tests" {}) &
pids+=($!)
targets=$("$BUILD/tests/kldq_fuzz" --list)
for t in $targets; do
  "$BUILD/tests/kldq_fuzz" --seconds "${KLDQ_FUZZ_SECONDS:-30}" --out "$BUILD/fuzz-out" "$t" \
    >"$BUILD/asan-fuzz-$t.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
cases=$(ls "$BUILD"/asan-cases/*.log | wc -l)
echo "test cases under ASan/UBSan: $cases run, $(cat "$BUILD/asan-cases/failed" 2>/dev/null | wc -l) failed"
for f in "$BUILD"/asan-cases/*.log; do
  if grep -q -E "ERROR: AddressSanitizer|runtime error:|FAILED|No test cases matched" "$f" ||
    ! grep -q "All tests passed" "$f"; then
    rc=1
    echo "== $(cat "${f%.log}.name")"
    tail -60 "$f"
  fi
done
for t in $targets; do tail -1 "$BUILD/asan-fuzz-$t.log"; done
exit $rc
