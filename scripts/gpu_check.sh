#!/usr/bin/env bash
# One prepared check for a machine with a GPU and no network (issue 13). Under 10 minutes.
#
#   bash scripts/gpu_check.sh [OUT_DIR]             # on the GPU machine (default benchmarks/results/gpu_check)
#   bash scripts/gpu_check.sh --dry-run [OUT_DIR]   # on CPU: tiny preset, gloo; checks the script itself
#
# Parts, each under its own timeout, each exit code recorded:
#   1. nvidia-smi and the environment                          -> OUT/nvidia_smi.txt
#   2. tests: the device tests on every device present (tests/test_devices.py), then the rest of
#      the fast suite                                           -> OUT/pytest_devices.log, OUT/pytest.log
#   3. mergedna pretrain under torchrun --nproc_per_node=1 (nccl), DDP and FSDP2, small preset at
#      4 kb: 4 steps with checkpoints, then --resume to 6; every collective of the trainer runs.
#      A 2-process DDP run too when two GPUs exist.             -> OUT/torchrun_*.log
#   4. timing of the three-pass step (paper, small, base at 4 kb x 8, with and without activation
#      checkpointing; bp/s, FLOP/s, utilisation of the bf16 peak measured in the same run, peak
#      memory beside the start-up estimate)                     -> OUT/gpu_check.json, OUT/gpu_check.md
# The results file carries device, driver, torch, date, commit and the exit codes of parts 2-3.
# Python: $PYTHON, else python3 (the GPU machine's own PyTorch). Needs numpy, safetensors, tqdm,
# matplotlib (all in that machine's image) and pytest for part 2.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT=$(realpath -m "${1:-benchmarks/results/gpu_check}")
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT/src:$ROOT/tests:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
declare -a STATUS=()
T0=$SECONDS
note() { echo "[gpu_check $((SECONDS - T0))s] $*"; }

if ((DRY)); then
  DEVICE=cpu; PRESET=tiny; WINDOW=256; BATCH=2; FASTA=$ROOT/tests/fixtures/chr20_slice.fa; VAL=20:59001-61000
  NGPU=0; export OMP_NUM_THREADS=1; TEST_FILES=(tests/test_devices.py); REST=()
else
  DEVICE=cuda; PRESET=small; WINDOW=4096; BATCH=8; VAL=0.01
  FASTA=$ROOT/src/mergedna/data/embedded/Ecoli_K12_MG1655.fasta.gz  # in the repo: no network needed
  NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  TEST_FILES=(tests/test_devices.py); REST=(-m "not slow" tests)
fi

# 1. environment
{ nvidia-smi 2>&1 || echo "nvidia-smi: not available"; "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"; git rev-parse HEAD 2>/dev/null || echo "commit unknown (no git)"; } >"$OUT/nvidia_smi.txt" 2>&1
note "GPUs: $NGPU"

# 2. tests: device-parametrised ones first (they are the point here), then the fast suite
XDIST=()
if ((!DRY)) && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 8); fi
timeout 150 "$PY" -m pytest -q -p no:cacheprovider "${TEST_FILES[@]}" >"$OUT/pytest_devices.log" 2>&1
STATUS+=("tests_devices=$?"); note "device tests: ${STATUS[-1]}"
if ((${#REST[@]})); then
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" "${REST[@]}" >"$OUT/pytest.log" 2>&1
  STATUS+=("tests_suite=$?"); note "suite: ${STATUS[-1]}"
fi

# 3. pretrain under torchrun: a run with checkpoints, then a resume; checked from its outputs
pretrain() {  # name nproc strategy; skipped (status "skipped") once 5 of the 10 minutes are gone
  local name=$1 nproc=$2 strategy=$3 run="$WORK/$1" rc=0
  if ((SECONDS - T0 > 300)); then STATUS+=("torchrun_$name=skipped"); note "torchrun $name: skipped (time)"; return; fi
  for steps in 4 6; do
    local extra=(); [[ $steps == 6 ]] && extra=(--resume)
    timeout 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m mergedna.cli pretrain \
      --fasta "$FASTA" --val "$VAL" --out "$run" --cache-dir "$WORK/cache" --preset "$PRESET" --window "$WINDOW" \
      --batch-size "$BATCH" --steps $steps --warmup 2 --val-windows 4 --val-every 2 --ckpt-every 2 --log-every 1 \
      --grad-accum 2 --device "$DEVICE" --strategy "$strategy" --no-progress "${extra[@]}" >>"$OUT/torchrun_$name.log" 2>&1 || rc=$?
    ((rc)) && break
  done
  if ((!rc)); then
    "$PY" - "$run" "$nproc" >>"$OUT/torchrun_$name.log" 2>&1 <<'EOF' || rc=99
import json, math, sys
from pathlib import Path
run, nproc = Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
train = [r["step"] for r in rows if r["split"] == "train"]
assert train == [1, 2, 3, 4, 5, 6], train
assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r), "non-finite loss"
ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
assert ckpts[-1] == "step-00000006", ckpts
cfg = json.loads((run / "run_config.json").read_text())
assert cfg["meta"]["world_size"] == nproc
print("check passed:", json.dumps({"steps": train, "checkpoints": ckpts, "memory": cfg["memory"],
                                    "activation_checkpointing": cfg["train"]["activation_checkpointing"]}))
EOF
  fi
  STATUS+=("torchrun_$name=$rc"); note "torchrun $name: $rc"
}
pretrain ddp_1 1 ddp
pretrain fsdp_1 1 fsdp
if ((DRY)) || ((NGPU >= 2)); then pretrain ddp_2 2 ddp; fi

# 4. timing, and the results file with every part's exit code (its timeout keeps the total under 10 minutes)
DRYFLAG=(); ((DRY)) && DRYFLAG=(--dry-run)
timeout $((570 - (SECONDS - T0) > 60 ? 570 - (SECONDS - T0) : 60)) "$PY" benchmarks/gpu_check.py --out "$OUT" "${DRYFLAG[@]}" --status "${STATUS[@]}" >"$OUT/timing.log" 2>&1
rc=$?
note "timing: $rc; results in $OUT/gpu_check.md"
cat "$OUT/gpu_check.md" 2>/dev/null
for s in "${STATUS[@]}"; do [[ ${s#*=} == 0 ]] || rc=1; done
exit $rc
