#!/usr/bin/env bash
# The 30-minute CPU pretraining run of the `small` preset on human chr20 (GRCh37), holding out
# the last 3 Mb of the chromosome for validation. Writes runs/pretrain_chr20_small/ and copies the
# small result files (metrics, curves, summary, config) into results/pretrain_chr20_small/.
#   usage: bash scripts/pretrain_chr20_cpu.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN=runs/pretrain_chr20_small
.venv/bin/mergedna pretrain --fasta "$DATA/genomes/GRCh37_chr20.fa.gz" --val 20:60000001-63025520 \
  --preset small --window 1024 --batch-size 8 --steps 250 --warmup 25 --lr 1e-3 \
  --val-every 25 --val-windows 16 --ckpt-every 25 --log-every 5 --time-limit 30 --seed 0 --out "$RUN" "${@:2}"
mkdir -p results/pretrain_chr20_small
cp "$RUN"/{metrics.jsonl,curves.png,summary.json,run_config.json} results/pretrain_chr20_small/
