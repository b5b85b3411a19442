#!/usr/bin/env bash
# Issue 14, results: MergeDNA fine-tuned with the default recipe (10 epochs, early stopping on dev,
# lr by init, default sequence head) against the Genomic Benchmarks CNN and a k-mer logistic
# regression trained on the same splits and seeds, selected on dev only, test evaluated once.
#
#   usage: bash scripts/finetune_vs_baselines.sh [MODEL_DIR ...]
#   env:   DATA (../shared/data), SEEDS (3), PRESET (tiny), GUE_TASKS ("mouse/0"), OUT (results/finetune_vs_baselines),
#          EXTRA (more `mergedna benchmark` flags for every row), GUE_EXTRA (for the GUE rows only, e.g. "--epochs 3"),
#          BASELINE_TASKS (GUE tasks that get a baselines-only table, e.g. "mouse/0 prom/prom_300_tata")
#
# Rows: the from-scratch PRESET with both baselines on UCI splice (embedded) and GUE_TASKS; then one
# row per MODEL_DIR (a pretrained checkpoint, e.g. runs/tok15/learned/model) on the same tasks and
# seeds, without retraining the baselines. Finished runs are reused; one job at a time, niced.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
SEEDS="${SEEDS:-3}"
PRESET="${PRESET:-tiny}"
GUE_TASKS="${GUE_TASKS-mouse/0}"  # set and empty: no GUE rows
OUT="${OUT:-results/finetune_vs_baselines}"
PY="${PYTHON:-/work/main/.venv/bin/python}"
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
COMMON=(--seeds "$SEEDS" --precision fp32 --no-progress ${EXTRA:-})
bench() { nice -n 10 "$PY" -m mergedna.cli benchmark "$@"; }

bench --suite csv --data-root src/mergedna/data/embedded --tasks splice.csv "${COMMON[@]}" \
    --preset "$PRESET" --out "$OUT/splice/scratch_$PRESET"
[ -n "$GUE_TASKS" ] && bench --suite gue --data-root "$DATA/gue" --tasks $GUE_TASKS "${COMMON[@]}" ${GUE_EXTRA:-} \
    --preset "$PRESET" --out "$OUT/gue/scratch_$PRESET"
[ -n "${BASELINE_TASKS:-}" ] && bench --suite gue --data-root "$DATA/gue" --tasks $BASELINE_TASKS --seeds "$SEEDS" \
    --no-progress --out "$OUT/gue/baselines_only"
for model in "$@"; do
  name=$(basename "$(dirname "$model")")_$(basename "$model")
  bench --suite csv --data-root src/mergedna/data/embedded --tasks splice.csv "${COMMON[@]}" --baselines \
      --model "$model" --out "$OUT/splice/$name"
  [ -n "$GUE_TASKS" ] && bench --suite gue --data-root "$DATA/gue" --tasks $GUE_TASKS "${COMMON[@]}" ${GUE_EXTRA:-} --baselines \
      --model "$model" --out "$OUT/gue/$name"
done
for suite in splice gue; do
  [ -d "$OUT/$suite" ] || continue
  for d in "$OUT/$suite"/*/; do cat "$d/results.md"; echo; done
done > "$OUT/README.md"
cat "$OUT/README.md"
