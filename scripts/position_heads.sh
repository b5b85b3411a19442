#!/usr/bin/env bash
# Issue 14, the position experiment: does the sequence head need absolute position?
# MergeDNA `tiny` from random initialisation, one run per (task, head, seed), the same recipe for
# every head; selection on dev only, one test evaluation per run. Heads: mean (the paper's
# size-weighted mean over bases), cls (a CLS token that never merges), attention (attention pooling
# over bases with a learned absolute-position term), flatten (per-base features flattened),
# mean_flatten (the sum of mean and flatten).
#   usage: bash scripts/position_heads.sh [DATA_DIR] [SEEDS] [TASKS...]
#   env: HEADS (default "mean cls attention flatten mean_flatten"), GUE_EPOCHS (3), OUT (results/position_heads),
#        HEAD_LR_SCALE (none: the flatten layer at the peak lr, as the first runs here; fan_in, sqrt_fan_in)
#   tasks: "splice" (UCI splice, embedded, 80/10/10 split) or GUE task folders (mouse/0 ...)
# Runs already finished (metrics.json present) are kept; the summary is rebuilt at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
SEEDS="${2:-0}"
shift $(( $# < 2 ? $# : 2 ))
if [ $# -gt 0 ]; then TASKS=("$@"); else TASKS=(splice mouse/0); fi
OUT="${OUT:-results/position_heads}"
PY="${PYTHON:-/work/main/.venv/bin/python}"
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
for task in "${TASKS[@]}"; do
  if [ "$task" = splice ]; then
    src=(--task src/mergedna/data/embedded/splice.csv --layout csv); epochs=8
  else
    src=(--task "$DATA/gue/$task" --layout gue); epochs=${GUE_EPOCHS:-3}
  fi
  for seed in $SEEDS; do
    for head in ${HEADS:-mean cls attention flatten mean_flatten}; do
      dir="$OUT/runs/$task/$head/seed$seed"
      [ -f "$dir/metrics.json" ] && continue
      nice -n 10 "$PY" -m mergedna.cli finetune "${src[@]}" --preset tiny --pooling "$head" --seed "$seed" \
        --epochs "$epochs" --lr 1e-3 --batch-size 32 --warmup-ratio 0.1 --patience 0 --precision fp32 \
        --head-lr-scale "${HEAD_LR_SCALE:-none}" \
        --no-progress --out "$dir"
      rm -rf "$dir/model"
    done
  done
done
"$PY" scripts/summarise_runs.py "$OUT" > "$OUT/README.md"
cat "$OUT/README.md"
