#!/usr/bin/env bash
# Tokenizer speed, kldq vs Hugging Face tokenizers, side by side on this machine, single thread:
#   scripts/bench_tokenizer.sh [MODEL_DIR] [TEXT_FILE]
# (defaults: ../shared/data/qwen-tokenizer and ../shared/data/wikitext-2/wiki.test.raw)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KLDQ_BUILD_DIR:-$ROOT/build}"
MODEL="${1:-$ROOT/../shared/data/qwen-tokenizer}"
FILE="${2:-$ROOT/../shared/data/wikitext-2/wiki.test.raw}"
"$ROOT/scripts/setup.sh"
cmake --build "$BUILD" --target kldq_bench_tokenize >/dev/null
taskset -c 0 "$BUILD/kldq_bench_tokenize" --model "$MODEL" --file "$FILE"
taskset -c 0 "$ROOT/.venv/bin/python" "$ROOT/bench/tokenize_peer.py" --model "$MODEL" --file "$FILE"
