#!/usr/bin/env bash
# Idempotent setup: Debian/Ubuntu packages, the project virtualenv (.venv with the torch wheel
# that provides libtorch, plus the test oracles), and a configured CMake build in build/.
# Each step checks first and does nothing when already done, so a second run is a no-op.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KLDQ_BUILD_DIR:-$ROOT/build}"
VENV="$ROOT/.venv"
# yaml-cpp and sentencepiece are for the experiment files and tokenizers of later issues; fmt
# comes with libtorch's headers (docs/ARCHITECTURE.md explains why spdlog is not used).
PKGS=(build-essential cmake ninja-build ccache python3-venv libcli11-dev nlohmann-json3-dev
      libyaml-cpp-dev libsentencepiece-dev catch2)

say() { echo "setup: $*" >&2; }

# 1. System packages (only the missing ones; apt needs root or sudo).
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  say "installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Virtualenv with pinned wheels; a stamp of the requirements file marks it done.
REQ="$ROOT/scripts/requirements.txt"
STAMP="$VENV/.kldq-requirements"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! cmp -s "$REQ" "$STAMP" 2>/dev/null; then
  say "installing Python requirements into $VENV (torch is large; pip caches it)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$STAMP"
fi

# 3. CMake configure (once; later builds re-run CMake by themselves when CMakeLists change).
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  TORCH_PREFIX="$("$VENV/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"
  say "configuring $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DKLDQ_PYTHON="$VENV/bin/python" >/dev/null
fi
