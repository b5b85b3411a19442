#!/usr/bin/env bash
# Zero-shot variant effects on the 1,200 BRCA1 SGE SNVs (../shared/data/brca1): each pretraining
# checkpoint given, plus untrained `tiny` models (random weights, seeds $SEEDS) as the floor, scored with
# `mergedna score-variants --rc-average` (window = each model's max_length), then one AUROC table
# (LOF vs FUNC + INT; overall, coding, non-coding) beside CADD and phyloP from the VCF's INFO.
#   usage: bash scripts/variants_brca1.sh [NAME=]MODEL_DIR ...
#     e.g. bash scripts/variants_brca1.sh /work/main/runs/tok15/{learned,detached,fixed}/model
#   A model's name is NAME if given, else its folder's name (its parent's when the folder is `model`).
#   Environment: OUT (default results/variants/brca1), DATA (../shared/data/brca1), SEEDS ("0 1 2"),
#   MERGEDNA (the command, default .venv/bin/mergedna).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/variants/brca1}"
DATA="${DATA:-../shared/data/brca1}"
SEEDS="${SEEDS:-0 1 2}"
read -r -a MERGEDNA <<< "${MERGEDNA:-.venv/bin/mergedna}"
export OMP_NUM_THREADS=1
COMMON=(--fasta "$DATA/GRCh38_chr17_BRCA1_region.fa.gz" --vcf "$DATA/findlay2018_brca1_RING_exons2-5.vcf"
        --rc-average --no-progress)
mkdir -p "$OUT/scores"
names=() files=()

for seed in $SEEDS; do
    name="tiny_untrained_seed$seed"
    "${MERGEDNA[@]}" score-variants --preset tiny --seed "$seed" "${COMMON[@]}" --out "$OUT/scores/$name.tsv"
    names+=("$name") files+=("$OUT/scores/$name.tsv")
done

for arg in "$@"; do
    if [[ "$arg" == *=* ]]; then
        name="${arg%%=*}" dir="${arg#*=}"
    else
        dir="${arg%/}" name="$(basename "$dir")"
        [[ "$name" == model ]] && name="$(basename "$(dirname "$dir")")"
    fi
    "${MERGEDNA[@]}" score-variants --model "$dir" "${COMMON[@]}" --out "$OUT/scores/$name.tsv"
    names+=("$name") files+=("$OUT/scores/$name.tsv")
done

"${MERGEDNA[@]}" eval-variants --scores "${files[@]}" --names "${names[@]}" --label CLASS --positive LOF \
    --predictors CADD PHYLOP --group CSQ --group-as coding=Missense,Synonymous,Nonsense --group-rest non-coding \
    --bootstrap 1000 --seed 0 --out "$OUT"
