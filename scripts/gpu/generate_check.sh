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

# Parity: the same prompts through transformers (bf16, sdpa, cuda) and kldq (KLDQ_GEN_PARITY=0
# skips it, for a speed-only run).
if [ "${KLDQ_GEN_PARITY:-1}" != 0 ]; then
[ -f "$M/model.safetensors" ] || "$K" -q synth --shape qwen2.5-1.5b -o "$M" --device cuda --force
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
fi

# Decode speed (issue 20): `kldq eval --speed` (prompt 128, 256 new, EOS ignored, batch 1 and
# 16, decode steps replayed from a CUDA graph) per shape and format, the eager steps
# (--no-cuda-graph) at batch 1 for comparison, transformers' generate (hf_decode.py) and the copy
# bandwidth, all in this job; then each rate as a fraction of the bandwidth limit: bytes read per
# step (the weights a step reads: linear layers, norms and the LM head, not the embedding table
# unless tied; plus the whole K/V cache, which attention reads over every capacity column) per
# second against the copy's bytes read + written per second.
"$PY" - <<'PYEOF' | tee -a "$OUT/generate.log" "$OUT/bench.jsonl"
import json, torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); s, e = torch.cuda.Event(True), torch.cuda.Event(True)
s.record(); [y.copy_(x) for _ in range(10)]; e.record(); torch.cuda.synchronize()
print(json.dumps({"what": "copy_bandwidth_GBps", "value": round(2 * 10 * 2**30 / (s.elapsed_time(e) / 1e3) / 1e9, 1)}))
PYEOF
"$PY" - "$OUT" <<'PYEOF'
import json, sys, random
random.seed(0)
with open(f"{sys.argv[1]}/speed_1.jsonl", "w") as f:
    f.write(json.dumps({"ids": [random.randrange(150000) for _ in range(128)]}) + "\n")
PYEOF
for shape in ${KLDQ_GEN_SHAPES:-qwen2.5-1.5b qwen2.5-7b}; do
  MS="$MODELS/$shape"
  [ -f "$MS/model.safetensors" ] || "$K" -q synth --shape "$shape" -o "$MS" --device cuda --force
  for fmt in bf16 nf4 int4_g128; do
    base=""; [ "$fmt" != bf16 ] && base="--base $fmt"
    "$K" -q eval "$MS" $base --speed --device cuda -o "$OUT/speed_${shape}_$fmt.json" > /dev/null \
      2>> "$OUT/generate.log" || log "kldq eval --speed $shape $fmt failed"
  done
  for fmt in bf16 nf4; do
    [ "${KLDQ_GEN_EAGER:-1}" = 0 ] && break  # KLDQ_GEN_EAGER=0: no eager comparison
    base=""; [ "$fmt" != bf16 ] && base="--base $fmt"
    log "eager steps, $shape $fmt batch 1: $("$K" generate "$MS" $base --prompts "$OUT/speed_1.jsonl" --max-new-tokens 256 \
      --ignore-eos --batch 1 --no-cuda-graph -o "$OUT/speed_out.jsonl" 2>&1 | grep -o 'prefill.*')"
  done
  "$PY" "$ROOT/.gpu/bench/hf_decode.py" --shape "$shape" --batches 1,16 2>/dev/null \
    | sed "s/^/{\"peer\":\"hf_decode\",\"shape\":\"$shape\",\"line\":/; s/$/}/" | tee -a "$OUT/generate.log" "$OUT/bench.jsonl"
done
"$PY" - "$OUT" "$MODELS" ${KLDQ_GEN_SHAPES:-qwen2.5-1.5b qwen2.5-7b} <<'PYEOF' | tee -a "$OUT/generate.log" "$OUT/bench.jsonl"
import json, sys
out, models, shapes = sys.argv[1], sys.argv[2], sys.argv[3:]
copy = [json.loads(l)["value"] for l in open(f"{out}/bench.jsonl") if '"copy_bandwidth_GBps"' in l][-1]
for shape in shapes:
    c = json.load(open(f"{models}/{shape}/config.json"))
    L, H, V = c["num_hidden_layers"], c["hidden_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * (c.get("head_dim") or H // c["num_attention_heads"])
    for fmt in ("bf16", "nf4", "int4_g128"):
        try:
            j = json.load(open(f"{out}/speed_{shape}_{fmt}.json"))
        except (OSError, ValueError):
            continue
        sp = j["speed"]
        cols = sp["prompt"] + sp["new_tokens"]
        w = j["weight_bytes"] - (0 if c.get("tie_word_embeddings") else V * H * 2)
        for b in (1, 16):
            tps = sp[f"b{b}"]["decode_tokens_per_second"]
            step_bytes = w + 2 * L * b * kv * cols * 2
            print(json.dumps({"what": "decode_speed", "shape": shape, "format": fmt, "batch": b,
                              "tokens_per_s": round(tps, 1), "bytes_per_step_gb": round(step_bytes / 1e9, 3),
                              "fraction_of_copy_bandwidth": round(tps / b * step_bytes / 1e9 / copy, 3)}))
PYEOF
