#!/usr/bin/env bash
# GPU-machine check of kldq export: builds (env.sh's build_gpu), runs the CUDA tests,
# then on a synthesized qwen2.5-1.5b exports a mixed plan to compressed-tensors and GGUF (timed)
# and evaluates the compressed-tensors export against the model on the GPU beside kldq's own
# checkpoint of the same plan: the two evaluations must agree exactly. Logs to $OUT.
set -uo pipefail
LOG_NAME=export.log
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
BUILD="$ROOT/build-gpu"
M=/tmp/kldq-models
K="$BUILD/kldq"
build_gpu || exit 1
"$BUILD/tests/kldq_tests" "[cuda]" >"$OUT/cuda-tests.log" 2>&1
log "cuda tests: $(tail -2 "$OUT/cuda-tests.log" | head -1)"
mkdir -p "$M"
"$K" synth --shape qwen2.5-1.5b --device cuda -o "$M/q15" >/dev/null 2>&1 || { log "synth failed"; exit 1; }
cp "$ROOT/.gpu/shared/qwen-tokenizer/tokenizer"* "$M/q15/"
cat >"$M/plan.json" <<'JSON'
{"method": "rtn", "base": "int4_g128", "overrides": [
 {"layers": "*.o_proj", "format": "int8"},
 {"layers": "re:.*(gate|up)_proj", "format": "int4_g128_asym"},
 {"layers": "model.layers.1[0-9].mlp.down_proj", "format": "fp8_e4m3"},
 {"layers": "model.layers.2.*", "format": "bf16"}]}
JSON
t0=$(date +%s.%N)
"$K" export "$M/q15" --plan "$M/plan.json" --to compressed-tensors -o "$M/ct" >>"$OUT/export.log" 2>&1 || log "export ct failed"
t1=$(date +%s.%N)
"$K" export "$M/q15" --plan "$M/plan.json" --to gguf -o "$M/m.gguf" >>"$OUT/export.log" 2>"$OUT/gguf.err" || log "export gguf failed"
t2=$(date +%s.%N)
log "export compressed-tensors $("$PY" -c "print(round($t1 - $t0, 1))") s, gguf $("$PY" -c "print(round($t2 - $t1, 1))") s; sizes: $(du -sh "$M/ct" | cut -f1) / $(du -sh "$M/m.gguf" | cut -f1)"
"$K" quantize "$M/q15" --plan "$M/plan.json" -o "$M/q" >/dev/null 2>&1
WIKI="$ROOT/.gpu/shared/wikitext-2/wiki.test.raw"
for m in q ct; do
  "$K" eval "$M/$m" --reference "$M/q15" --ppl "$WIKI" --kld -o "$OUT/eval-$m.json" >"$OUT/eval-$m.log" 2>&1 \
    || { log "eval $m failed"; tail -5 "$OUT/eval-$m.log"; }
  log "eval $m: $(grep -E '^ppl|^weights' "$OUT/eval-$m.log" | tr '\n' ' ')"
done
