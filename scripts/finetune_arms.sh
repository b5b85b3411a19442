#!/usr/bin/env bash
# Issue 14: one-change arms of `tiny` from scratch on one GUE task (first: why does mouse/0 resist MergeDNA
# from scratch? `tiny` is a cheap stand-in for `small`, which showed the same signature on a GPU:
# results/finetune_small_scratch_gpu). 2,000 steps, the auxiliary masked loss from step 0, dev every 200
# steps, no early stopping, best-on-dev weights tested once; one arm changes one thing against the default:
#   default   the fine-tuning defaults (mean_flatten head, lr 1e-3, merge ratio 0.5)
#   nomerge   --merge-ratio 1.0: every base its own token (is the merging at random init what blocks it?)
#   mean      --pooling mean: the paper's head (composition, which the k-mer model lives on, without flatten)
#   lr3e-4    --lr 3e-4
#   max       --pooling max: each feature's largest value over tokens (a motif detector; not run by default)
#   conv9     --conv-stem 9: a width-9 depthwise convolution over the base embeddings (not run by default)
#   conv9_mean, conv9_max   the stem with the mean or the max head (not run by default)
#   drop0.1   --dropout 0.1: residual dropout in every block (the encoder has none by default; not run by default)
#   ema0.99   --ema 0.99: dev sees, selection keeps and test gets a moving average of the weights (not run by default)
#   bin8      --pool-bin 8: the flatten path reads each channel's maximum over bins of 8 bases, as the CNN
#             baseline's max-pools do (not run by default)
#   usage: bash scripts/finetune_arms.sh [DATA_DIR] [ARM ...]     (default: all four; seed 0)
#   env: TASK (mouse/0, a GUE task), OUT (results/mouse_0_arms), SEED (0), STEPS (2000), EVERY (200),
#        PRECISION (fp32), PRESET (tiny)
# Finished runs (metrics.json present) are kept; the table (results.md) is rebuilt at the end (scripts/summarise_runs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
shift $(( $# < 1 ? $# : 1 ))
if [ $# -gt 0 ]; then ARMS=("$@"); else ARMS=(default nomerge mean lr3e-4); fi
TASK="${TASK:-mouse/0}"
OUT="${OUT:-results/mouse_0_arms}"
SEED="${SEED:-0}"
PY="${PYTHON:-$PWD/.venv/bin/python}"
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src"
for arm in "${ARMS[@]}"; do
  case "$arm" in
    default) extra=() ;;
    nomerge) extra=(--merge-ratio 1.0) ;;
    mean) extra=(--pooling mean) ;;
    lr3e-4) extra=(--lr 3e-4) ;;
    max) extra=(--pooling max) ;;
    conv9) extra=(--conv-stem 9) ;;
    conv9_mean) extra=(--conv-stem 9 --pooling mean) ;;
    conv9_max) extra=(--conv-stem 9 --pooling max) ;;
    drop0.1) extra=(--dropout 0.1) ;;
    ema0.99) extra=(--ema 0.99) ;;
    bin8) extra=(--pool-bin 8) ;;
    *) echo "unknown arm $arm" >&2; exit 2 ;;
  esac
  dir="$OUT/runs/$TASK/$arm/seed$SEED"
  [ -f "$dir/metrics.json" ] && continue
  resume=(); [ -f "$dir/finetune_state.pt" ] && resume=(--resume)
  "$PY" -m mergedna.cli finetune --task "$DATA/gue/$TASK" --preset "${PRESET:-tiny}" --out "$dir" --seed "$SEED" \
      --max-steps "${STEPS:-2000}" --eval-every "${EVERY:-200}" --patience 0 --mlm-weight 1 \
      --precision "${PRECISION:-fp32}" --no-progress \
      "${extra[@]}" "${resume[@]}"
done
"$PY" scripts/summarise_runs.py "$OUT" > "$OUT/results.md"
