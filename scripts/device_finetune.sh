#!/usr/bin/env bash
# Issue 14 on a lent GPU (one prepared call, under 10 minutes): MergeDNA `small` from random init on the four
# GUE tasks of the bar, three seeds each, all twelve runs at once on one GPU, each bounded by time
# (--max-time: warm-up and decay follow the clock) and by 30 epochs, selected on dev, test evaluated once.
# The recipe is the CPU one of scripts/finetune_small_scratch.sh with --mlm-weight 1 (batch 32, lr 1e-3,
# mean_flatten head) in the device's own precision (auto: bf16 on a CUDA GPU), with more training.
# The device tests (tests/test_devices.py) run beside it.
#
#   usage: bash scripts/device_finetune.sh GUE_ROOT OUT [MAX_TIME_S]
#   env:   DEVICE (cuda), PRESET (small), PYTHON (python3); DEVICE=cpu PRESET=tiny checks the script on a CPU;
#          TASKS (the four, space-separated), SEEDS ("0 1 2"), EXTRA (more benchmark options, e.g. "--conv-stem 9")
#   e.g. (on the device machine) bash scripts/device_finetune.sh .devdata/gue $OUT/runs 400
# OUT gets one benchmark folder (runs/<task>/seed<k>/metrics.json per run: rerun `mergedna benchmark` on it
# with the same settings elsewhere to tabulate them), the device tests' log and the environment.
set -uo pipefail
cd "$(dirname "$0")/.."
GUE=$(realpath "$1"); OUT=$(realpath -m "$2"); T=${3:-400}
PY=${PYTHON:-python3}
mkdir -p "$OUT/logs"
export PYTHONPATH="$PWD/src:$PWD/tests" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 MERGEDNA_PRECISION_CACHE=/tmp/mergedna_precision.json
T0=$SECONDS
{ nvidia-smi 2>&1; "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"; git rev-parse HEAD 2>/dev/null; nproc; } >"$OUT/env.txt" 2>&1
(timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py >"$OUT/logs/pytest_devices.log" 2>&1
 echo "exit $?" >>"$OUT/logs/pytest_devices.log") &
declare -A EVERY=([prom/prom_core_notata]=250 [tf/0]=250 [mouse/0]=100 [prom/prom_300_tata]=100)
for task in ${TASKS:-prom/prom_core_notata tf/0 mouse/0 prom/prom_300_tata}; do
  for seed in ${SEEDS:-0 1 2}; do
    timeout $((T + 90)) "$PY" -m mergedna.cli benchmark --suite gue --data-root "$GUE" --tasks "$task" --seeds 1 \
      --first-seed "$seed" --out "$OUT" --preset "${PRESET:-small}" --device "${DEVICE:-cuda}" --precision auto --mlm-weight 1 --epochs 30 \
      --max-time "$T" --eval-every "${EVERY[$task]:-250}" --eval-batch-size 256 --patience 0 --baselines --no-progress ${EXTRA:-} \
      >"$OUT/logs/${task//\//_}_seed$seed.log" 2>&1 &
  done
done
wait
echo "[device_finetune] all done in $((SECONDS - T0)) s"
for f in "$OUT"/logs/*.log; do echo "== $f"; tail -n 3 "$f"; done
"$PY" - "$OUT" <<'PY'
import json, pathlib, sys
rows = []
for m in sorted(pathlib.Path(sys.argv[1]).glob("runs/*/*/seed*/metrics.json")) + sorted(pathlib.Path(sys.argv[1]).glob("runs/*/seed*/metrics.json")):
    r = json.loads(m.read_text())
    rows.append(f"{r['task']['name']:>22} seed {r['seed']}: test mcc {r['test']['mcc']:.4f}  best dev {r['best_dev']['mcc']:.4f} "
                f"at {r['best_step']}/{r['steps']} ({r['epochs_done']} ep, {r['sequences_per_s']} seq/s, {r['precision']}, {r['device']})")
print("\n".join(rows) or "no finished runs")
PY
