#!/usr/bin/env bash
# GPU-machine check of generation (after a build in build-gpu): greedy parity with transformers'
# generate in bf16 on a synthesized qwen2.5-1.5b (16 prompts of 8-64 random tokens in one
# left-padded batch, 64 new tokens), then decode speed beside ../shared/bench/hf_decode.py
# (prompt 128, 256 new tokens, EOS ignored, batch 1 and 16) and the copy bandwidth of the same
# GPU. Logs to $OUT (or ./gpu-out).
set -uo pipefail
LOG_NAME=generate.log
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
M="$MODELS/qwen2.5-1.5b"
mkdir -p "$MODELS"
[ -f "$M/model.safetensors" ] || "$K" -q synth --shape qwen2.5-1.5b -o "$M" --device cuda --force

# Parity: the same prompts through transformers (bf16, sdpa, cuda) and kldq.
"$PY" - "$M" "$OUT" <<'PYEOF'
import json, sys, torch
model, out = sys.argv[1], sys.argv[2]
g = torch.Generator().manual_seed(5)
prompts = [torch.randint(0, 150000, (int(n),), generator=g).tolist()
           for n in torch.randint(8, 65, (16,), generator=g)]
with open(f"{out}/gen_prompts.jsonl", "w") as f:
    for p in prompts: f.write(json.dumps({"ids": p}) + "\n")
json.dump({"model": model, "prompts": prompts, "batches": [list(range(16))], "max_new_tokens": 64,
           "device": "cuda", "dtype": "bfloat16"}, open(f"{out}/gen_req.json", "w"))
PYEOF
"$PY" "$ROOT/tests/oracle/generate_oracle.py" "$OUT/gen_req.json" > "$OUT/gen_hf.json" || log "hf generate failed"
"$K" generate "$M" --prompts "$OUT/gen_prompts.jsonl" --max-new-tokens 64 --batch 16 \
  -o "$OUT/gen_kldq.jsonl" 2>>"$OUT/generate.log" || log "kldq generate failed"
"$PY" - "$OUT" <<'PYEOF' | tee -a "$OUT/generate.log"
import json, sys
out = sys.argv[1]
hf = json.load(open(f"{out}/gen_hf.json"))["new"]
kq = [json.loads(l)["tokens"] for l in open(f"{out}/gen_kldq.jsonl")]
same = 0; first = []
for a, b in zip(hf, kq):
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    same += a == b; first.append(n)
print(json.dumps({"what": "generate_parity", "prompts": len(hf), "identical": same,
                  "first_divergence": first}))
PYEOF

# Decode speed: kldq and transformers on the same shape, prompt 128, 256 new, EOS ignored.
"$PY" - "$OUT" <<'PYEOF'
import json, sys, random
random.seed(0)
for b in (1, 16):
    with open(f"{sys.argv[1]}/speed_{b}.jsonl", "w") as f:
        for _ in range(b): f.write(json.dumps({"ids": [random.randrange(150000) for _ in range(128)]}) + "\n")
PYEOF
for b in 1 16; do
  for fmt in "" "--base nf4" "--base int4_g128"; do
    "$K" generate "$M" --prompts "$OUT/speed_$b.jsonl" --max-new-tokens 8 --ignore-eos --batch "$b" $fmt -o "$OUT/warm.jsonl" 2>/dev/null  # warm-up
    log "kldq batch $b ${fmt:-bf16}: $("$K" generate "$M" --prompts "$OUT/speed_$b.jsonl" --max-new-tokens 256 --ignore-eos --batch "$b" $fmt -o "$OUT/speed_out.jsonl" 2>&1 | grep -o 'prefill.*')"
  done
done
"$PY" "$ROOT/.gpu/bench/hf_decode.py" --shape qwen2.5-1.5b --batches 1,16 2>/dev/null | tee -a "$OUT/generate.log"
"$PY" - <<'PYEOF' | tee -a "$OUT/generate.log"
import json, torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); s, e = torch.cuda.Event(True), torch.cuda.Event(True)
s.record(); [y.copy_(x) for _ in range(10)]; e.record(); torch.cuda.synchronize()
print(json.dumps({"what": "copy_bandwidth_GBps", "value": round(2 * 10 * 2**30 / (s.elapsed_time(e) / 1e3) / 1e9, 1)}))
PYEOF
