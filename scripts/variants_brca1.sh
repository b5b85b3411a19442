#!/usr/bin/env bash
# Zero-shot variant effects on the 1,200 BRCA1 SGE SNVs (../shared/data/brca1): each pretraining
# checkpoint given, plus untrained `tiny` models (random weights, seeds $SEEDS) as the floor, scored with
# `mergedna score-variants --rc-average` with each mask of $MASKS (the variant's token; its base alone), then
# one AUROC table (LOF vs FUNC + INT; overall, coding, non-coding) beside CADD and phyloP from the VCF's INFO.
#   usage: bash scripts/variants_brca1.sh [NAME=]MODEL_DIR ...
#     e.g. bash scripts/variants_brca1.sh /work/main/runs/tok15/{learned,detached,fixed}/model
#   A model's name is NAME if given, else its folder's name (its parent's when the folder is `model`); rows
#   are named NAME_MASK. Environment: OUT (default results/variants/brca1), DATA (../shared/data/brca1),
#   SEEDS ("0 1 2"), MASKS ("token base"), WINDOW (default: each model's max_length; the tok15 runs
#   trained on 512-bp windows), MERGEDNA (the command, default .venv/bin/mergedna).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/variants/brca1}"
DATA="${DATA:-../shared/data/brca1}"
SEEDS="${SEEDS:-0 1 2}"
MASKS="${MASKS:-token base}"
read -r -a MERGEDNA <<< "${MERGEDNA:-.venv/bin/mergedna}"
export OMP_NUM_THREADS=1
COMMON=(--fasta "$DATA/GRCh38_chr17_BRCA1_region.fa.gz" --vcf "$DATA/findlay2018_brca1_RING_exons2-5.vcf"
        --rc-average --no-progress ${WINDOW:+--window "$WINDOW"})
mkdir -p "$OUT/scores"
names=() files=()

score() {  # NAME, then the model source flags
    local name="$1"; shift
    for mask in $MASKS; do
        "${MERGEDNA[@]}" score-variants "$@" --mask "$mask" "${COMMON[@]}" --out "$OUT/scores/${name}_$mask.tsv"
        names+=("${name}_$mask") files+=("$OUT/scores/${name}_$mask.tsv")
    done
}

for seed in $SEEDS; do
    score "tiny_untrained_seed$seed" --preset tiny --seed "$seed"
done

for arg in "$@"; do
    if [[ "$arg" == *=* ]]; then
        name="${arg%%=*}" dir="${arg#*=}"
    else
        dir="${arg%/}" name="$(basename "$dir")"
        [[ "$name" == model ]] && name="$(basename "$(dirname "$dir")")"
    fi
    score "$name" --model "$dir"
done

"${MERGEDNA[@]}" eval-variants --scores "${files[@]}" --names "${names[@]}" --label CLASS --positive LOF \
    --predictors CADD PHYLOP --group CSQ --group-as coding=Missense,Synonymous,Nonsense --group-rest non-coding \
    --bootstrap 1000 --seed 0 --out "$OUT"
