#!/usr/bin/env bash
# Issue 14, item 4: the tokenizer issue's three `tiny` checkpoints (results/tok15/{learned,detached,fixed},
# 80 min of chr20 pretraining each) fine-tuned on GUE tasks, beside `tiny` from random init on the same
# recipe and the CNN and k-mer baselines on the same splits and seeds. Selection on dev, test once.
#
#   usage: bash scripts/finetune_tok15_gue.sh TASK[:MAX_STEPS] ...     e.g. mouse/0 prom/prom_300_tata:600
#   env:   DATA (../shared/data), SEEDS (1), ARMS ("learned detached fixed scratch"),
#          OUT (results/finetune_tok15_gue), EVAL_EVERY (100, on step-capped tasks)
# Default recipe otherwise (10 epochs, early stopping on dev, lr 1e-4 from a checkpoint and 1e-3 from
# random init). One benchmark per task and arm; finished seeds are reused on rerun. One thread, niced.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATA:-../shared/data}"
SEEDS="${SEEDS:-1}"
ARMS="${ARMS:-learned detached fixed scratch}"
OUT="${OUT:-results/finetune_tok15_gue}"
PY="${PYTHON:-$PWD/.venv/bin/python}"
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
for spec in "$@"; do
  task="${spec%%:*}"; steps=""; [ "$spec" != "$task" ] && steps="${spec##*:}"
  for arm in $ARMS; do
    init=(--model "results/tok15/$arm/model"); [ "$arm" = scratch ] && init=(--preset tiny)
    extra=(--seeds "$SEEDS" --precision fp32 --no-progress "${init[@]}" --out "$OUT/${task//\//_}/$arm")
    [ -n "$steps" ] && extra+=(--max-steps "$steps" --eval-every "${EVAL_EVERY:-100}")
    nice -n 10 "$PY" -m mergedna.cli benchmark --suite gue --data-root "$DATA/gue" --tasks "$task" "${extra[@]}"
  done
done
