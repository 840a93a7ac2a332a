#!/usr/bin/env bash
# Profile benchmark on the GPU machine (issue 6): `kldq profile --mode quantize-one
# --granularity linear --base nf4` over 64 x 512 calibration tokens of synthesized Qwen2.5
# shapes, then, in the same job on the same GPU, the Hugging Face peers on the same units and
# token count: hf_baseline.py's kld_profile_nf4 (a full forward per layer) and
# hf_cached_profile.py (block-input caching, the stronger peer). Lines go to $OUT/bench.jsonl.
#
#   scripts/gpu/bench_profile.sh            after scripts/gpu/check.sh has built build-gpu
# KLDQ_GPU_SHAPES (default "qwen2.5-1.5b qwen2.5-7b"), KLDQ_PROFILE_BATCHES (default "8 16"),
# KLDQ_PEERS (default "baseline cached"; "" skips them), KLDQ_PROFILE_EXTRA (more kldq options),
# KLDQ_PROFILE_MODES (default "quantize-one"; add restore-one to time it too), KLDQ_PEER_LAYERS
# (hf_baseline times only its first N linears: each costs the same full forward, so its
# s_per_linear x 196 is the whole profile; saves device time). The 1.5B runs cap the allocator
# at 22 GiB (--max-gpu-memory), what a 24 GB card such as an L4 leaves.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
fail=0
[ -x "$K" ] || { log "bench_profile: $K is not built (run scripts/gpu/check.sh first)"; exit 1; }
[ -d "$SHARED/qwen-tokenizer" ] || { log "bench_profile: needs $SHARED/qwen-tokenizer"; exit 1; }
# Calibration text: the WikiText-2 test set (about 290k Qwen tokens; 32768 are drawn).
CALIB="$SHARED/wikitext-2/wiki.test.raw"

for shape in ${KLDQ_GPU_SHAPES:-qwen2.5-1.5b qwen2.5-7b}; do
  M="$MODELS/$shape"
  [ -f "$M/config.json" ] || "$K" -q synth --shape "$shape" -o "$M" --device cuda --force \
    || { log "synth $shape failed"; exit 1; }
  cp "$SHARED/qwen-tokenizer/tokenizer.json" "$SHARED/qwen-tokenizer/tokenizer_config.json" "$M/"
  CAP=""; [ "$shape" = qwen2.5-1.5b ] && CAP="--max-gpu-memory 22GiB"
  for mode in ${KLDQ_PROFILE_MODES:-quantize-one}; do
  for b in ${KLDQ_PROFILE_BATCHES:-8 16}; do
    P="$OUT/profile_${shape}_${mode}_b$b.json"
    "$K" -v profile "$M" --base nf4 --calib "$CALIB" --samples 64 --seq-len 512 --batch "$b" \
      --mode "$mode" --granularity linear --device cuda $CAP ${KLDQ_PROFILE_EXTRA:-} -o "$P" \
      2> "$P.log" || { fail=1; tail -5 "$P.log"; continue; }
    grep -E ": [0-9.]+ s$" "$P.log" | sed 's/^/   /' | tee -a "$OUT/check.log"
    "$PY" - "$P" "$shape" "$b" <<'PYEOF' | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
import json, sys
j = json.load(open(sys.argv[1]))
kl = [u["kl_mean"] for u in j["units"]]
print(json.dumps({"what": "kldq_profile_nf4", "shape": sys.argv[2], "mode": j["mode"], "batch": int(sys.argv[3]),
                  "units": len(kl), "tokens": j["calibration"]["samples"] * j["calibration"]["seq_len"],
                  "s_profile": round(j["seconds_profile"], 2), "s_total": round(j["seconds"], 2),
                  "peak_mem_gib": round(j["peak_cuda_bytes"] / 2**30, 2), "min_kl": min(kl),
                  "baseline_kl": j["baseline_kl"], "device": j["device_name"]}))
PYEOF
  done
  done
  for peer in ${KLDQ_PEERS-baseline cached}; do
    case $peer in
      baseline) "$PY" "$BENCH/hf_baseline.py" --shape "$shape" --calib-seqs 64 --seq-len 512 --batch 8 \
                  --layers "${KLDQ_PEER_LAYERS:-0}" 2>/dev/null | grep -E '"kld_profile_nf4"|peak_mem' ;;
      cached) (cd "$BENCH" && "$PY" hf_cached_profile.py --shape "$shape" --calib-seqs 64 --seq-len 512 \
                  --batch 8 2>/dev/null) ;;
    esac | sed "s/^/{\"peer\":\"hf_$peer\",\"shape\":\"$shape\",\"line\":/; s/$/}/" \
      | tee -a "$OUT/bench.jsonl" "$OUT/check.log"
  done
done
log "bench_profile done (fail=$fail)"
exit $fail
