#!/usr/bin/env bash
# Issue 14's bar: MergeDNA `small` from random init against the Genomic Benchmarks CNN and a k-mer
# logistic regression, same splits and seeds, each selected on dev only, test evaluated once.
#
#   usage: bash scripts/finetune_small_scratch.sh TASK[:MAX_STEPS] ...
#          e.g. splice mouse/0:600 prom/prom_300_tata:150 tf/0:300 prom/prom_core_notata:300
#   env:   DATA (../shared/data), SEEDS (3), FIRST_SEED (0), PRESET (small), POOLING (auto),
#          OUT (results/finetune_small_scratch), BASELINES ("cnn kmer"; empty: none),
#          EVAL_EVERY (100: dev evaluations every that many steps on step-capped tasks),
#          MLM_WEIGHT (0: the weight of the auxiliary masked-modelling loss, finetune --mlm-weight),
#          MLM_ON_COLLAPSE (1: finetune --mlm-on-collapse, the standby loss's weight; 0 = never switched on)
#
# `splice` is the embedded UCI splice set (the default recipe: 10 epochs, early stopping on dev);
# any other TASK is a GUE folder under $DATA/gue. A MAX_STEPS suffix caps MergeDNA's training at that
# many optimiser steps (batch 32) where 10 epochs do not fit a CPU; the CNN and k-mer baselines keep
# their own full recipes. One benchmark per task (finished seeds are reused on rerun, an unfinished one
# continues from its last dev evaluation), one thread, niced.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
SEEDS="${SEEDS:-3}"
PRESET="${PRESET:-small}"
OUT="${OUT:-results/finetune_small_scratch}"
PY="${PYTHON:-$PWD/.venv/bin/python}"
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
for spec in "$@"; do
  task="${spec%%:*}"; steps=""; [ "$spec" != "$task" ] && steps="${spec##*:}"
  name="${task//\//_}"
  extra=(--seeds "$SEEDS" --first-seed "${FIRST_SEED:-0}" --precision fp32 --no-progress --preset "$PRESET"
         --pooling "${POOLING:-auto}" --mlm-weight "${MLM_WEIGHT:-0}"
         --mlm-on-collapse "${MLM_ON_COLLAPSE:-1}" --out "$OUT/$name" --baselines ${BASELINES-cnn kmer})
  [ -n "$steps" ] && extra+=(--max-steps "$steps" --eval-every "${EVAL_EVERY:-100}")
  if [ "$task" = splice ]; then
    nice -n 10 "$PY" -m mergedna.cli benchmark --suite csv --data-root src/mergedna/data/embedded \
        --tasks splice.csv "${extra[@]}"
  else
    nice -n 10 "$PY" -m mergedna.cli benchmark --suite gue --data-root "$DATA/gue" --tasks "$task" "${extra[@]}"
  fi
done
