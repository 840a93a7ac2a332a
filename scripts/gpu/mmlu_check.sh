#!/usr/bin/env bash
# MMLU with the shared few-shot prefix against every prompt run whole (issue 20), after a build in
# build-gpu: full 5-shot MMLU (14,042 questions unless KLDQ_MMLU_LIMIT) of a synthesized
# qwen2.5-1.5b in bf16 (or KLDQ_MMLU_DTYPE), both paths in this job on this GPU: seconds of each,
# the speedup, and how many predictions agree and the largest log-probability difference. Lines go
# to $OUT/bench.jsonl, each path's phases (tokenization, prefixes, batches) to mmlu.log.
#
#   scripts/gpu/mmlu_check.sh        KLDQ_MMLU_BATCH (default 64), KLDQ_MMLU_LIMIT (default all),
#                                    KLDQ_MMLU_PATHS (default "shared unshared"), KLDQ_MMLU_DTYPE
#                                    (default bf16; fp32 separates bf16 rounding from the paths)
set -uo pipefail
LOG_NAME=mmlu.log
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
[ -x "$K" ] || { log "mmlu_check: $K is not built (run scripts/gpu/check.sh first)"; exit 1; }
M="$MODELS/qwen2.5-1.5b"
mkdir -p "$MODELS"
[ -f "$M/model.safetensors" ] || "$K" -q synth --shape qwen2.5-1.5b -o "$M" --device cuda --force \
  || { log "synth failed"; exit 1; }
cp "$SHARED/qwen-tokenizer/tokenizer.json" "$SHARED/qwen-tokenizer/tokenizer_config.json" "$M/"
LIMIT=""; [ -n "${KLDQ_MMLU_LIMIT:-}" ] && LIMIT="--mmlu-limit $KLDQ_MMLU_LIMIT"
fail=0
for path in ${KLDQ_MMLU_PATHS:-shared unshared}; do
  flag=""; [ $path = unshared ] && flag="--mmlu-unshared"
  "$K" -v eval "$M" --mmlu "$SHARED/mmlu" $LIMIT --batch "${KLDQ_MMLU_BATCH:-64}" --device cuda \
    $flag --dtype "${KLDQ_MMLU_DTYPE:-bf16}" \
    --predictions "/tmp/mmlu_$path.jsonl" -o "/tmp/mmlu_$path.json" > /dev/null 2>> "$OUT/mmlu.log" \
    || { fail=1; log "mmlu $path failed"; tail -3 "$OUT/mmlu.log"; }
  log "$path: $(grep -o 'MMLU: tokenized.*' "$OUT/mmlu.log" | tail -1)"
done
[ "${KLDQ_MMLU_PATHS:-shared unshared}" = "shared unshared" ] || exit $fail  # one path: no comparison
"$PY" - <<'PYEOF' | tee -a "$OUT/mmlu.log" "$OUT/bench.jsonl" || fail=1
import json, sys
m = {p: json.load(open(f"/tmp/mmlu_{p}.json")) for p in ("shared", "unshared")}
rows = {p: [json.loads(l) for l in open(f"/tmp/mmlu_{p}.jsonl")] for p in m}
a, b = rows["shared"], rows["unshared"]
same = sum(x["pred"] == y["pred"] for x, y in zip(a, b))
dlp = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x["logprobs"], y["logprobs"]))
# bf16 noise flips a prediction only where the two best answers are closer than the noise: the
# unshared path's top-2 margin of each question that changed, and how many questions have a
# margin below the largest log-probability difference seen.
margin = lambda r: (lambda s: s[-1] - s[-2])(sorted(r["logprobs"]))
flipped = sorted(margin(y) for x, y in zip(a, b) if x["pred"] != y["pred"])
close = sum(margin(y) < dlp for y in b)
print(json.dumps({"what": "mmlu_shared_prefix", "dtype": m["shared"].get("dtype"),
                  "n": len(a), "same_predictions": same,
                  "agreement": round(same / len(a), 5), "max_logprob_diff": dlp,
                  "flipped_margin_max": flipped[-1] if flipped else None,
                  "flipped_margin_median": flipped[len(flipped) // 2] if flipped else None,
                  "questions_with_margin_below_max_diff": close,
                  "acc_shared": m["shared"]["mmlu_acc"], "acc_unshared": m["unshared"]["mmlu_acc"],
                  "s_shared": round(m["shared"]["seconds_mmlu"], 2),
                  "s_unshared": round(m["unshared"]["seconds_mmlu"], 2),
                  "speedup": round(m["unshared"]["seconds_mmlu"] / m["shared"]["seconds_mmlu"], 2),
                  "peak_gib_shared": round(m["shared"]["peak_cuda_bytes"] / 2**30, 2),
                  "device": m["shared"].get("device_name")}))
sys.exit(0 if len(a) == len(b) and same >= 0.999 * len(a) else 1)
PYEOF
log "mmlu_check done (fail=$fail)"
exit $fail
