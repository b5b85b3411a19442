"""scripts/gpu_check.sh and its timing script, run on CPU in their dry-run mode (no GPU here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_timing_script_dry_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path),
                          "--status", "tests=0"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["dry_run"] and out["status"] == {"tests": "0"} and out["meta"]["git_commit"]
    assert [r["activation_checkpointing"] for r in out["steps"]] == [False, True]
    for row in out["steps"]:
        assert row["bp_per_s"] > 0 and 0 < row["utilisation"] and row["step_flops"] > 0
        # the start-up estimate against what autograd saved in the same run
        assert 0.8 < row["estimate_gib"]["activations"] / row["saved_activations_gib"] < 1.25
    assert "| tiny | 256 × 2 | True |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_gpu_check_script_dry_run(tmp_path):
    """The whole script on CPU: device tests, torchrun DDP/FSDP2 with resume (1 and 2 processes, gloo), timing."""
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    status = json.loads((tmp_path / "gpu_check.json").read_text())["status"]
    assert status == {"tests_devices": "0", "torchrun_ddp_1": "0", "torchrun_fsdp_1": "0", "torchrun_ddp_2": "0"}
