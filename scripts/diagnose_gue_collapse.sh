#!/usr/bin/env bash
# Why does MergeDNA from scratch not learn GUE mouse/0 (results/finetune_small_scratch/diagnostic_collapse)?
# `tiny` stands in for `small` (both collapse there; tiny is ~10x cheaper). One thread each, seed 0.
#   bash scripts/diagnose_gue_collapse.sh [GUE_ROOT]     (default ../shared/data/gue)
set -euo pipefail
cd "$(dirname "$0")/.."
GUE=${1:-../shared/data/gue}
OUT=results/finetune_small_scratch/diagnostic_collapse
export OMP_NUM_THREADS=1
run() {  # name, then finetune options
  local name=$1; shift
  [ -f "$OUT/runs/$name/metrics.json" ] && return
  .venv/bin/mergedna finetune --task "$GUE/mouse/0" --preset tiny --precision fp32 --no-progress \
    --out "/tmp/mergedna_collapse/$name" --overwrite "$@"
  mkdir -p "$OUT/runs/$name" && cp "/tmp/mergedna_collapse/$name/metrics.json" "$OUT/runs/$name/"
}
# 1. heads x learning rates, the default recipe capped at 600 steps (early stopping on dev, patience 3)
for pool in mean cls flatten; do for lr in 1e-3 1e-4; do
  run "tiny_${pool}_${lr}" --pooling "$pool" --lr "$lr" --max-steps 600
done; done
# 2. 15 epochs without early stopping
run tiny_mouse_0_mean_1e-3_3000 --pooling mean --lr 1e-3 --max-steps 3000 --eval-every 200 --patience 0
run tiny_mouse_0_flatten_1e-4_3000 --pooling flatten --lr 1e-4 --max-steps 3000 --eval-every 200 --patience 0
# 3. the spread of the pooled vectors during training: mouse/0 (collapses) against UCI splice (learns)
for spec in "$GUE/mouse/0:mouse_0:1e-3" "$GUE/mouse/0:mouse_0:1e-4" "src/mergedna/data/embedded/splice.csv:splice:1e-3"; do
  IFS=: read -r task name lr <<< "$spec"
  [ -f "$OUT/probe_${name}_lr${lr}.json" ] || .venv/bin/python scripts/diagnose_collapse.py "$task" --lr "$lr" \
    --out "$OUT/probe_${name}_lr${lr}.json"
done
