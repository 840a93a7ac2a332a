#!/usr/bin/env bash
# GPU-machine check: configure against that machine's own torch (no network there), build, run
# the CUDA-tagged tests, the transformers parity check and the forward benchmarks side by side
# with the Hugging Face peer. Everything is logged to $OUT (or ./gpu-out).
#
#   scripts/gpu/check.sh [--quick]      --quick: tests and parity only, no benchmarks
# KLDQ_CTEST_ARGS narrows ctest (for example "-L cuda": the CPU suite runs in CI anyway).
# Needs ../shared/bench copied to .gpu/bench (the peer script) and ../shared/data copied to
# .gpu/shared (real models, tokenizer, WikiText-2, MMLU: the data tests then run there too, and
# the evaluation benchmark reads its text and tokenizer from it); see docs/GPU.md.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
BUILD="$ROOT/build-gpu"
QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
fail=0
[ -d "$SHARED" ] && export KLDQ_SHARED_DATA="$SHARED"

log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
build_gpu || exit 1

ctest --test-dir "$BUILD" ${KLDQ_CTEST_ARGS:-} --output-on-failure >"$OUT/ctest.log" 2>&1 || fail=1
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
STORIES="$SHARED/models/stories260k-qwen2"
EXTRA=""; [ -d "$STORIES" ] && EXTRA="--model $STORIES"
"$PY" "$ROOT/scripts/gpu/hf_parity.py" --kldq "$K" --model "$MODELS/qwen2.5-1.5b" $EXTRA --out "$OUT/parity.json" \
  2>>"$OUT/check.log" | tee -a "$OUT/check.log" || fail=1

# Quantized checkpoint of the 1.5B shape: nf4 bytes of the linear layers against the formula
# n/2 + 4 ceil(n/64) per layer, and inspect's totals against the file on disk.
Q15="$MODELS/qwen2.5-1.5b-nf4"
"$K" -q quantize "$MODELS/qwen2.5-1.5b" --base nf4 -o "$Q15" --force || fail=1
"$K" inspect --json "$Q15" > "$OUT/inspect_nf4.json" || fail=1
"$PY" - "$OUT/inspect_nf4.json" "$Q15/model.safetensors" <<'PYEOF' | tee -a "$OUT/check.log" || fail=1
import json, os, struct, sys
j = json.load(open(sys.argv[1]))
want = sum(l["shape"][0] * l["shape"][1] // 2 + 4 * -(-l["shape"][0] * l["shape"][1] // 64)
           for l in j["linear_layers"])
got = sum(l["weight_bytes"] for l in j["linear_layers"])
header = 8 + struct.unpack("<Q", open(sys.argv[2], "rb").read(8))[0]
size = os.path.getsize(sys.argv[2])
print(json.dumps({"what": "nf4_bytes_1.5b", "linear_weight_bytes": got, "theory": want,
                  "exact": got == want, "tensor_bytes": j["tensor_bytes"], "header": header,
                  "file": size, "file_matches": j["tensor_bytes"] + header == size,
                  "bits_per_weight": j["linear_bits_per_weight"]}))
sys.exit(0 if got == want and j["tensor_bytes"] + header == size else 1)
PYEOF

if [ $QUICK -eq 0 ]; then
  log "dequantization throughput vs device-to-device copy, same run"
  "$BUILD/kldq_bench_dequant" | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
  BENCH="$ROOT/.gpu/bench/hf_baseline.py"
  # Evaluation: nf4 in memory, perplexity + per-token KL against the bf16 model over windows of
  # 2048 (64 windows of WikiText-2 with the Qwen tokenizer), then the peer's --ppl-kld (64
  # windows of 2048, batch 2), same GPU, same job.
  if [ -d "$SHARED/qwen-tokenizer" ]; then
    cp "$SHARED/qwen-tokenizer/tokenizer.json" "$SHARED/qwen-tokenizer/tokenizer_config.json" "$MODELS/qwen2.5-1.5b/"
    head -c 600000 "$SHARED/wikitext-2/wiki.test.raw" > "$OUT/wiki600k.txt"
    for b in 2 4; do
      "$K" -q eval "$MODELS/qwen2.5-1.5b" --base nf4 --ppl "$OUT/wiki600k.txt" --kld --ctx 2048 \
        --batch $b --device cuda -o "$OUT/eval_nf4_b$b.json" >/dev/null || fail=1
      "$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); print(json.dumps({'what':'kldq_ppl_kld_eval','batch':$b,'tokens':j['tokens'],'s':round(j['seconds_ppl'],3),'tok_per_s':round(j['tokens_per_second']),'kl_mean':j['kl_mean'],'peak_mem_gib':round(j['peak_cuda_bytes']/2**30,2)}))" \
        "$OUT/eval_nf4_b$b.json" | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
    done
    [ -f "$BENCH" ] && "$PY" "$BENCH" --shape qwen2.5-1.5b --layers 1 --ppl-kld --ctx 2048 --eval-windows 64 \
      --eval-batch 2 2>/dev/null | grep '"ppl_kld_eval"' | sed 's/^/{"peer":"hf","line":/; s/$/}/' \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
    log "MMLU 5-shot throughput, synth 1.5B (first 1000 questions, batch 16)"
    "$K" -q eval "$MODELS/qwen2.5-1.5b" --mmlu "$SHARED/mmlu" --mmlu-limit 1000 --batch 16 --device cuda \
      -o "$OUT/mmlu_b16.json" >/dev/null || fail=1
    "$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); print(json.dumps({'what':'kldq_mmlu_5shot','n':j['mmlu_n'],'s':round(j['seconds_mmlu'],2),'q_per_s':round(j['mmlu_n']/j['seconds_mmlu'],1),'peak_mem_gib':round(j['peak_cuda_bytes']/2**30,2)}))" \
      "$OUT/mmlu_b16.json" | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
  fi
  for shape in ${KLDQ_GPU_SHAPES:-qwen2.5-1.5b qwen2.5-7b}; do
    synth "$shape" || { log "synth $shape failed"; exit 1; }
    # 1.5B: also quantized in memory, so packed/dense forward ratios come from this run.
    BASES=""; [ "$shape" = qwen2.5-1.5b ] && BASES="--base nf4 int4_g128 int8 fp8_e4m3"
    log "forward benchmark $shape (8 x 512, logits) ${BASES}, kldq then transformers, same GPU"
    "$BUILD/kldq_bench" --model "$MODELS/$shape" --seqs 64 --batch 8 --seq-len 512 --device cuda $BASES \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
    [ -f "$BENCH" ] && "$PY" "$BENCH" --shape "$shape" --calib-seqs 64 --batch 8 --seq-len 512 --layers 1 \
      2>/dev/null | grep -E '"eval_forward"|peak_mem' | sed "s/^/{\"peer\":\"hf\",\"shape\":\"$shape\",\"line\":/; s/$/}/" \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
  done
fi
log "done (fail=$fail)"
exit $fail
