#!/usr/bin/env bash
# GPU-machine benchmark of the zero-shot tasks (after a build in build-gpu): all seven tasks in
# full (about 20,400 items) on a synthesized qwen2.5-1.5b in bf16, items/s per task and the
# total, at --batch 16 and 64; the task files travel in .gpu/shared/mc (docs/GPU.md: copy
# ../shared/data to .gpu/shared and name .gpu in `carry`). Logs to $OUT (or ./gpu-out).
set -uo pipefail
LOG_NAME=tasks.log
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
M="$MODELS/qwen2.5-1.5b"
MC="${KLDQ_TASKS_DIR:-$ROOT/.gpu/shared/mc}"
TASKS=arc_easy,arc_challenge,hellaswag,piqa,winogrande,boolq,openbookqa
[ -d "$MC" ] || { log "no task files in $MC"; exit 1; }
mkdir -p "$MODELS"
[ -f "$M/model.safetensors" ] || "$K" -q synth --shape qwen2.5-1.5b -o "$M" --device cuda --force
TOK="$ROOT/.gpu/shared/qwen-tokenizer"  # a synthesized checkpoint has no tokenizer of its own
[ -f "$M/tokenizer.json" ] || cp "$TOK/tokenizer.json" "$TOK/tokenizer_config.json" "$M/"
# Warm-up (CUDA kernels load lazily, cuBLAS picks algorithms on first use), not timed.
"$K" -q eval "$M" --tasks "$TASKS" --tasks-dir "$MC" --tasks-limit 20 --batch 16 \
  -o "$OUT/tasks_warm.json" > /dev/null 2>&1
for b in 16 64; do
  /usr/bin/time -v "$K" eval "$M" --tasks "$TASKS" --tasks-dir "$MC" --batch "$b" \
    -o "$OUT/tasks_b$b.json" > "$OUT/tasks_b$b.txt" 2> "$OUT/tasks_b$b.err" || log "kldq eval --tasks failed (batch $b)"
  log "batch $b:"; tee -a "$OUT/tasks.log" < "$OUT/tasks_b$b.txt"
  python3 - "$OUT/tasks_b$b.json" <<'PYEOF' | tee -a "$OUT/tasks.log"
import json, sys
j = json.load(open(sys.argv[1]))
n = sum(t["n"] for t in j["tasks"].values())
print(json.dumps({"what": "tasks_total", "items": n, "seconds_tasks": round(j["seconds_tasks"], 2),
                  "items_per_second": round(n / j["seconds_tasks"], 1),
                  "peak_cuda_gib": round(j["peak_cuda_bytes"] / 2**30, 2),
                  "per_task": {k: round(v["items_per_second"], 1) for k, v in j["tasks"].items()}}))
PYEOF
done
