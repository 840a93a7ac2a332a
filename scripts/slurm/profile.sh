#!/usr/bin/env bash
# A sensitivity profile spread over SHARDS GPUs of a SLURM cluster: a job array of SHARDS tasks
# (scripts/slurm/profile.sbatch, one `kldq profile --shard i/SHARDS` each, any node), then a merge
# job that starts when every task has succeeded (`kldq profile --merge`) and writes OUTPUT. The
# merged profile is the one a single run writes (docs/PROTOCOLS.md, "Shards").
#
#   scripts/slurm/profile.sh 16 results/72b-nf4.json /models/Qwen2.5-72B-Instruct --base nf4 \
#     --calib data/calib.txt --samples 64 --seq-len 512
#
# Extra sbatch options for both jobs go in KLDQ_SBATCH_ARGS (e.g. "--partition=gpu --account=x").
# The shards are kept in OUTPUT.shards/ (a failed task can be resubmitted alone with
# `KLDQ_SHARDS=SHARDS sbatch --array=I scripts/slurm/profile.sbatch ...`, then the merge by
# hand). Relative paths are this directory's.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: scripts/slurm/profile.sh SHARDS OUTPUT.json MODEL [kldq profile options]" >&2
  exit 2
fi
SHARDS="$1"
OUT="$2"
shift 2
if ! [[ "$SHARDS" =~ ^[1-9][0-9]*$ ]]; then
  echo "profile.sh: SHARDS $SHARDS: expected a positive whole number" >&2
  exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${KLDQ_ROOT:-$(dirname "$(dirname "$HERE")")}"
KLDQ="${KLDQ_BIN:-$ROOT/build/kldq}"
OUT="$(realpath -m "$OUT")"
KLDQ="$(realpath -m "$KLDQ")"
DIR="$OUT.shards"
read -r -a EXTRA <<<"${KLDQ_SBATCH_ARGS:-}"
array=$(KLDQ_ROOT="$ROOT" KLDQ_BIN="$KLDQ" KLDQ_SHARDS="$SHARDS" sbatch --parsable "${EXTRA[@]}" \
  --array="0-$((SHARDS - 1))" --export=ALL "$HERE/profile.sbatch" "$DIR" "$@")
array="${array%%;*}"  # "jobid;cluster" on federated clusters
files=()
for ((i = 0; i < SHARDS; ++i)); do files+=("$DIR/shard-$i-of-$SHARDS.json"); done
merge=$(sbatch --parsable "${EXTRA[@]}" --dependency="afterok:$array" --job-name=kldq-merge \
  --output="$OUT.merge.log" --wrap "$(printf '%q ' "$KLDQ" profile --merge "${files[@]}" -o "$OUT")")
echo "profile: array job $array ($SHARDS shards into $DIR), merge job ${merge%%;*} -> $OUT"
