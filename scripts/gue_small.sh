#!/usr/bin/env bash
# GUE fine-tuning of the `small` preset, from the chr20-pretrained checkpoint and from random
# initialisation, 3 seeds x 4 tasks each, under a fixed CPU budget (200 steps of batch 32 per run).
# The two arms run side by side, one thread each. Model selection on dev, one test evaluation.
#   usage: bash scripts/gue_small.sh [DATA_DIR] [PRETRAINED_MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
MODEL="${2:-runs/pretrain_chr20_small/model}"
TASKS="prom/prom_core_notata tf/0 mouse/0 prom/prom_300_tata"
COMMON=(--suite gue --data-root "$DATA/gue" --tasks $TASKS --seeds 3 --max-steps 200 --eval-every 50
        --batch-size 32 --lr 3e-4 --weight-decay 0.01 --patience 0 --no-progress)
export OMP_NUM_THREADS=1
.venv/bin/mergedna benchmark "${COMMON[@]}" --model "$MODEL" --out results/gue_small/pretrained &
.venv/bin/mergedna benchmark "${COMMON[@]}" --preset small --out results/gue_small/scratch &
wait
.venv/bin/mergedna compare results/gue_small/pretrained results/gue_small/scratch \
    --names "pretrained on chr20 (30 min CPU)" "from scratch" > results/gue_small/README.md
cat results/gue_small/README.md
