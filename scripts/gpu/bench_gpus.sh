#!/usr/bin/env bash
# Several GPUs (issue 24), after scripts/gpu/check.sh has built build-gpu: a synthesized
# qwen2.5-7b profile (nf4, quantize-one, linear, 64 x 512) on one GPU (the default), with
# `--gpus 0` (must equal the default), as two shards run one after the other and merged (must
# equal it), with `--gpus 0,1` on 2 or more GPUs and `--gpus all` on 3 or more: speedups
# over one GPU measured in this job, every unit's KL compared bit for bit. Lines go to
# $OUT/bench.jsonl; a difference fails the script.
#
#   scripts/gpu/bench_gpus.sh           KLDQ_GPUS_SHAPE (default qwen2.5-7b), KLDQ_GPUS_SAMPLES (64)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
SHAPE="${KLDQ_GPUS_SHAPE:-qwen2.5-7b}"
[ -x "$K" ] || { log "bench_gpus: $K is not built (run scripts/gpu/check.sh first)"; exit 1; }
M="$MODELS/$SHAPE"
[ -f "$M/config.json" ] || "$K" -q synth --shape "$SHAPE" -o "$M" --device cuda --force \
  || { log "synth $SHAPE failed"; exit 1; }
cp "$SHARED/qwen-tokenizer/tokenizer.json" "$SHARED/qwen-tokenizer/tokenizer_config.json" "$M/"
P="profile $M --base nf4 --calib $SHARED/wikitext-2/wiki.test.raw --samples ${KLDQ_GPUS_SAMPLES:-64} --seq-len 512 --granularity linear"
D="$OUT/gpus"
mkdir -p "$D"
run() {  # name, options...: one profile, its wall time in $D/name.s
  local name="$1"; shift
  local t0=$EPOCHREALTIME
  "$K" $P "$@" -o "$D/$name.json" 2> "$D/$name.log" || { log "$name failed"; tail -5 "$D/$name.log"; return 1; }
  "$PY" -c "print($EPOCHREALTIME - $t0)" > "$D/$name.s"
}
fail=0
cases=""  # the runs that completed, compared with the single-GPU one
run one || exit 1
if run gpus0 --gpus 0; then cases="gpus0"; else fail=1; fi
if run shard0 --shard 0/2 && run shard1 --shard 1/2 &&
  "$K" profile --merge "$D/shard0.json" "$D/shard1.json" -o "$D/merged.json"; then
  cases="$cases merged"
else
  fail=1
fi
n=$("$PY" -c 'import torch; print(torch.cuda.device_count())')  # as CUDA_VISIBLE_DEVICES allows
if [ "$n" -gt 1 ]; then
  if run gpus01 --gpus 0,1; then cases="$cases gpus01"; else fail=1; fi
fi
if [ "$n" -gt 2 ]; then
  if run gpusall --gpus all; then cases="$cases gpusall"; else fail=1; fi
fi
"$PY" - "$D" "$SHAPE" "$n" $cases <<'PYEOF' | tee -a "$OUT/bench.jsonl" "$OUT/check.log" || fail=1
import json, sys
d, shape, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda k: json.load(open(f"{d}/{k}.json"))
# The merged profile's wall time is its shards' (run one after the other; the merge is instant).
secs = lambda k: (sum(secs(s) for s in ("shard0", "shard1")) if k == "merged"
                  else float(open(f"{d}/{k}.s").read()))
one = load("one")
bad = 0
for k in sys.argv[4:]:
    j = load(k)
    same = [a["kl_mean"] == b["kl_mean"] and a["id"] == b["id"] for a, b in zip(one["units"], j["units"])]
    ok = len(j["units"]) == len(one["units"]) and all(same) and j["baseline_kl"] == one["baseline_kl"]
    bad += not ok
    rec = {"what": "profile_gpus", "shape": shape, "case": k, "gpus_on_machine": n,
           "units_identical": sum(same), "units": len(one["units"]), "identical": ok,
           "s_profile": round(j["seconds_profile"], 2), "s_wall": round(secs(k), 2),
           "s_wall_one": round(secs("one"), 2), "s_profile_one": round(one["seconds_profile"], 2),
           "device": one["device_name"]}
    if k.startswith("gpus") and k != "gpus0":
        rec["speedup_profile"] = round(one["seconds_profile"] / j["seconds_profile"], 2)
        rec["speedup_wall"] = round(secs("one") / secs(k), 2)
    print(json.dumps(rec))
sys.exit(1 if bad else 0)
PYEOF
exit $fail
