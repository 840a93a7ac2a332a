#!/usr/bin/env bash
# Calibrated quantization benchmark on the GPU machine (issue 8): `kldq quantize --method gptq`
# and `--method awq` to int4 group 128 on 128 x 512 calibration tokens of a synthesized
# Qwen2.5 shape, timed with the peak CUDA memory; then `kldq eval` of each checkpoint against
# the bf16 model on WikiText-2 test (KL, perplexity). Lines go to $OUT/bench.jsonl.
#
#   scripts/gpu/bench_quantize.sh       after scripts/gpu/check.sh (or a build-gpu build)
# KLDQ_GPU_SHAPES (default "qwen2.5-1.5b"), KLDQ_QUANT_METHODS (default "gptq awq rtn"; hqq
# quantizes to int4_g128_fz, its float-zero form of int4 group 128), KLDQ_GPU_MEMORY (a
# --max-gpu-memory for quantize and eval, e.g. 22GiB).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
fail=0
[ -x "$K" ] || { log "bench_quantize: $K is not built"; exit 1; }
[ -d "$SHARED/qwen-tokenizer" ] || { log "bench_quantize: needs $SHARED/qwen-tokenizer"; exit 1; }
CALIB="$SHARED/wikitext-2/wiki.test.raw"

for shape in ${KLDQ_GPU_SHAPES:-qwen2.5-1.5b}; do
  M="$MODELS/$shape"
  [ -f "$M/config.json" ] || "$K" -q synth --shape "$shape" -o "$M" --device cuda --force \
    || { log "synth $shape failed"; exit 1; }
  cp "$SHARED/qwen-tokenizer/tokenizer.json" "$SHARED/qwen-tokenizer/tokenizer_config.json" "$M/"
  for method in ${KLDQ_QUANT_METHODS:-gptq awq rtn}; do
    Q="$MODELS/$shape-$method"
    CAL=""; [ "$method" = gptq ] || [ "$method" = awq ] && CAL="--calib $CALIB --samples 128 --seq-len 512"
    BASE="--base int4 --group 128"; [ "$method" = hqq ] && BASE="--base int4_g128_fz"
    CAP=""; [ -n "${KLDQ_GPU_MEMORY:-}" ] && CAP="--max-gpu-memory $KLDQ_GPU_MEMORY"
    start=$(python3 -c "import time; print(time.time())")
    "$K" quantize "$M" $BASE --method "$method" $CAL --device cuda --force $CAP \
      -o "$Q" > "$OUT/quantize_${shape}_$method.log" 2>&1 \
      || { fail=1; tail -5 "$OUT/quantize_${shape}_$method.log"; continue; }
    secs=$(python3 -c "import time; print(time.time() - $start)")
    grep -E "quantized|calibration output error" "$OUT/quantize_${shape}_$method.log" | sed 's/^/   /' \
      | tee -a "$OUT/check.log"
    E="$OUT/eval_${shape}_$method.json"
    "$K" -q eval "$Q" --reference "$M" --ppl "$SHARED/wikitext-2/wiki.test.raw" --ctx 2048 --kld \
      --device cuda $CAP -o "$E" > /dev/null 2>&1 || { fail=1; continue; }
    "$PY" - "$E" "$shape" "$method" "$secs" "$OUT/quantize_${shape}_$method.log" <<'PYEOF' \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
import json, re, sys
j = json.load(open(sys.argv[1]))
log = open(sys.argv[5]).read()
peak = re.search(r"peak CUDA memory ([0-9.]+) GiB", log)
print(json.dumps({"what": "kldq_quantize_int4_g128", "base": j.get("base"), "bits_per_weight": j.get("bits_per_weight"), "shape": sys.argv[2], "method": sys.argv[3],
                  "s_wall": round(float(sys.argv[4]), 1), "peak_mem_gib": float(peak.group(1)) if peak else None,
                  "kl_mean": j.get("kl_mean"), "ppl": j.get("ppl"), "ppl_ref": j.get("ppl_ref"),
                  "device": j["device_name"]}))
PYEOF
  done
done
log "bench_quantize done (fail=$fail)"
exit $fail
