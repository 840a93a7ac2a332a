#!/usr/bin/env bash
# Memory-budget benchmark on the GPU machine (issue 18): commands on synthesized Qwen2.5 shapes
# under --max-gpu-memory (22 GiB: what a 24 GB card leaves; 4 GiB: a small card) against the
# same command uncapped, in one job on one GPU: time, peak GPU and host memory, host-to-device
# bytes, the residency line, and whether the capped results are bit-identical (every unit's KL,
# perplexity and KL). Lines go to $OUT/bench.jsonl.
#
#   scripts/gpu/bench_memory.sh [STEP...]     after scripts/gpu/check.sh has built build-gpu
# Steps (default "small 7b"): small = 1.5B profile and eval under 4 GiB, and the refusal of an
# impossible 1 GiB; 7b = 7B profile under 22 GiB; 14b = 14B profile under 22 GiB and against
# its all-resident compute time; 14b-rest = 14B eval (nf4 ppl + KL + 1000 MMLU questions) and
# GPTQ under 22 GiB; 14b-run = a two-point `kldq run` of the 14B (uniform nf4 and int8, perplexity
# + KL) with max_gpu_memory 22GiB in the experiment file. KLDQ_MEM_SAMPLES (default 64) calibration windows of 512 tokens.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
CALIB="$SHARED/wikitext-2/wiki.test.raw"
N="${KLDQ_MEM_SAMPLES:-64}"
fail=0
[ -x "$K" ] || { log "bench_memory: $K is not built"; exit 1; }
mkdir -p "$MODELS"
synth() {
  [ -f "$MODELS/$1/config.json" ] || "$K" -q synth --shape "$1" -o "$MODELS/$1" --device cuda --force \
    || { log "synth $1 failed"; exit 1; }
  cp "$SHARED/qwen-tokenizer/tokenizer.json" "$SHARED/qwen-tokenizer/tokenizer_config.json" "$MODELS/$1/"
}
# One JSON line per run: what, shape, cap, seconds, peaks, streamed bytes, residency.
report() {  # report WHAT SHAPE CAP FILE
  "$PY" - "$@" <<'PYEOF' | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
import json, sys
what, shape, cap, f = sys.argv[1:5]
j = json.load(open(f))
keep = {k: j[k] for k in ("seconds", "seconds_profile", "seconds_ppl", "seconds_mmlu", "ppl", "kl_mean",
                          "mmlu_acc", "baseline_kl", "residency") if k in j}
print(json.dumps({"what": what, "shape": shape, "cap": cap, **keep,
                  "peak_gpu_gib": round(j.get("peak_cuda_bytes", 0) / 2**30, 2),
                  "peak_host_gib": round(j.get("peak_host_bytes", 0) / 2**30, 2),
                  "h2d_gib": round(j.get("streamed_bytes", 0) / 2**30, 1)}))
PYEOF
}
same_profile() {  # same_profile A B: every unit's KL bit-identical
  "$PY" - "$1" "$2" <<'PYEOF' | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
same = a["baseline_kl"] == b["baseline_kl"] and [u["kl_mean"] for u in a["units"]] == [u["kl_mean"] for u in b["units"]]
print(json.dumps({"what": "profile_bit_identical", "a": sys.argv[1].split("/")[-1], "b": sys.argv[2].split("/")[-1],
                  "units": len(a["units"]), "identical": same,
                  "time_ratio": round(b["seconds_profile"] / a["seconds_profile"], 3)}))
sys.exit(0 if same else 1)
PYEOF
}
profile() {  # profile SHAPE CAP(or "") TAG [more options]
  local shape=$1 cap=$2 tag=$3; shift 3
  local P="$OUT/profile_${shape}_$tag.json"
  "$K" -v profile "$MODELS/$shape" --base nf4 --calib "$CALIB" --samples "$N" --seq-len 512 --batch 8 \
    --granularity linear --device cuda ${cap:+--max-gpu-memory $cap} "$@" -o "$P" 2> "$P.log" \
    || { fail=1; log "profile $shape $tag failed"; tail -3 "$P.log"; return 1; }
  grep -E "resident:" "$P.log" | sed 's/^/   /' | tee -a "$OUT/check.log"
  report profile "$shape" "${cap:-none}" "$P"
}

for step in ${@:-small 7b}; do
  case $step in
    small)
      synth qwen2.5-1.5b
      profile qwen2.5-1.5b "" uncapped && profile qwen2.5-1.5b 4GiB cap4 \
        && { same_profile "$OUT/profile_qwen2.5-1.5b_uncapped.json" "$OUT/profile_qwen2.5-1.5b_cap4.json" || fail=1; }
      head -c 600000 "$CALIB" > "$OUT/wiki600k.txt"
      for cap in "" 4GiB; do
        E="$OUT/eval_1.5b_${cap:-uncapped}.json"
        "$K" -v eval "$MODELS/qwen2.5-1.5b" --base nf4 --ppl "$OUT/wiki600k.txt" --kld --ctx 2048 --batch 2 \
          --device cuda ${cap:+--max-gpu-memory $cap} -o "$E" 2> "$E.log" || { fail=1; tail -3 "$E.log"; }
        report eval qwen2.5-1.5b "${cap:-none}" "$E"
      done
      "$PY" -c "import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); s=a['ppl']==b['ppl'] and a['kl_mean']==b['kl_mean']; print(json.dumps({'what':'eval_bit_identical','identical':s})); sys.exit(0 if s else 1)" \
        "$OUT/eval_1.5b_uncapped.json" "$OUT/eval_1.5b_4GiB.json" | tee -a "$OUT/bench.jsonl" "$OUT/check.log" || fail=1
      # An impossible budget: refused before any work, one line, exit 1, no output.
      "$K" profile "$MODELS/qwen2.5-1.5b" --base nf4 --calib "$CALIB" --samples "$N" --seq-len 512 \
        --device cuda --max-gpu-memory 1GiB -o "$OUT/refused.json" > /dev/null 2> "$OUT/refused.log"
      rc=$?
      echo "{\"what\": \"refusal_1GiB\", \"rc\": $rc, \"lines\": $(wc -l < "$OUT/refused.log"), \"output\": $([ -e "$OUT/refused.json" ] && echo true || echo false), \"message\": $("$PY" -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read().strip()))' "$OUT/refused.log")}" \
        | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
      [ $rc -eq 1 ] || fail=1 ;;
    7b)
      synth qwen2.5-7b
      profile qwen2.5-7b "" uncapped && profile qwen2.5-7b 22GiB cap22 \
        && { same_profile "$OUT/profile_qwen2.5-7b_uncapped.json" "$OUT/profile_qwen2.5-7b_cap22.json" || fail=1; } ;;
    14b)
      synth qwen2.5-14b
      profile qwen2.5-14b 22GiB cap22 && profile qwen2.5-14b "" uncapped \
        && { same_profile "$OUT/profile_qwen2.5-14b_uncapped.json" "$OUT/profile_qwen2.5-14b_cap22.json" || fail=1; } ;;
    14b-rest)
      synth qwen2.5-14b
      head -c 600000 "$CALIB" > "$OUT/wiki600k.txt"
      E="$OUT/eval_14b_cap22.json"
      "$K" -v eval "$MODELS/qwen2.5-14b" --base nf4 --ppl "$OUT/wiki600k.txt" --kld --ctx 2048 --batch 4 \
        --mmlu "$SHARED/mmlu" --mmlu-limit 1000 --device cuda --max-gpu-memory 22GiB -o "$E" 2> "$E.log" \
        || { fail=1; tail -3 "$E.log"; }
      grep -E "resident:" "$E.log" | sed 's/^/   /' | tee -a "$OUT/check.log"
      report eval qwen2.5-14b 22GiB "$E"
      Q="$OUT/q14.log"; s=$(date +%s)
      "$K" -v quantize "$MODELS/qwen2.5-14b" --method gptq --base int4 --group 128 --calib "$CALIB" \
        --samples 128 --seq-len 512 --device cuda --max-gpu-memory 22GiB -o /tmp/q14 --force > "$Q" 2>&1 \
        || { fail=1; tail -3 "$Q"; }
      grep -E "resident:|quantized" "$Q" | sed 's/^/   /' | tee -a "$OUT/check.log"
      echo "{\"what\": \"gptq_14b_cap22\", \"s\": $(( $(date +%s) - s ))}" | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
      rm -rf /tmp/q14 ;;
    14b-run)
      synth qwen2.5-14b
      head -c 600000 "$CALIB" > "$OUT/wiki600k.txt"
      R=/tmp/run14; rm -rf "$R"
      cat > "$OUT/two.yaml" <<YEOF
name: two-14b
models: [$MODELS/qwen2.5-14b]
data: {ppl: $OUT/wiki600k.txt}
sweep: {planner: uniform, base: [nf4, int8]}
eval: {ctx: 2048, kld: true, batch: 4}
max_gpu_memory: 22GiB
output: $R
YEOF
      s=$(date +%s)
      "$K" -v run "$OUT/two.yaml" > "$OUT/run14.log" 2>&1 || { fail=1; tail -5 "$OUT/run14.log"; }
      grep -E "resident:|\\[[0-9]+/[0-9]+\\]" "$OUT/run14.log" | sed 's/^/   /' | tee -a "$OUT/check.log"
      for m in "$R"/stages/*/metrics.json; do [ -f "$m" ] && report run_stage qwen2.5-14b 22GiB "$m"; done
      echo "{\"what\": \"run_14b_cap22\", \"points\": $(wc -l < "$R/runs.jsonl" 2>/dev/null || echo 0), \"s\": $(( $(date +%s) - s ))}" \
        | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
      cp "$R/summary.csv" "$R/runs.jsonl" "$OUT/" 2>/dev/null ;;
  esac
done
log "bench_memory done (fail=$fail)"
exit $fail
