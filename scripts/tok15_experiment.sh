#!/usr/bin/env bash
# Issue 15's experiment: three tokenizer arms pretrained on GRCh37 chr20 with 20:50,000,000-60,000,000 held out,
# same preset, steps, batch, seed and data stream; run side by side (one thread each) so that each gets the same
# share of the machine. Arms: (a) learned merging with relaxed merge degrees, (b) the same with no gradient into
# the grouping embedding, (c) fixed spans of 2 (no learned merging; the grouping projections, 0.8% of the
# parameters, are absent). Resumable: rerun the script and each arm continues from its last checkpoint.
#   bash scripts/tok15_experiment.sh [OUT_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tok15}
STEPS=${2:-1500}
DATA=${DATA:-../shared/data}
PY=${PY:-.venv/bin/python}
common=(--fasta "$DATA/genomes/GRCh37_chr20.fa.gz" --val 20:50000000-60000000 --preset tiny --window 512
        --batch-size 4 --steps "$STEPS" --lr 1e-3 --warmup 50 --log-every 10 --val-every 100 --val-windows 32
        --ckpt-every 50 --seed 0 --time-limit ${TIME_LIMIT:-80} --resume --no-progress)
mkdir -p "$OUT"
for arm in learned detached fixed; do
  case $arm in
    learned) extra=(--merge-grad relaxed) ;;
    detached) extra=(--merge-grad none) ;;
    fixed) extra=(--tokenizer fixed --fixed-span 2) ;;
  esac
  OMP_NUM_THREADS=1 nohup "$PY" -m mergedna.cli pretrain "${common[@]}" "${extra[@]}" --out "$OUT/$arm" \
    > "$OUT/$arm.log" 2>&1 &
done
wait
