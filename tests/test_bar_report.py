"""scripts/bar_report.py: MergeDNA runs beside the CNN and k-mer of the same seeds, and the bar's verdict."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mergedna.benchmark import run_benchmark

from mergedna_testing import FIXTURES, REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bar_report_puts_each_task_beside_its_baselines_and_gives_the_verdict(tmp_path):
    root = tmp_path / "gue"
    shutil.copytree(FIXTURES / "tasks" / "gue" / "splice3", root / "tf" / "0")
    run_benchmark("gue", root, tmp_path / "runs", tasks=["tf/0"], seeds=3, preset="tiny", max_steps=2,
                  batch_size=4, eval_every=2, progress=False, baselines=())
    run_benchmark("gue", root, tmp_path / "refs", tasks=["tf/0"], seeds=3, baselines=("cnn", "kmer"))
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bar_report.py"), "--baselines",
                          str(tmp_path / "refs"), str(tmp_path / "runs")], capture_output=True, text=True,
                         env={"PYTHONPATH": f"{REPO / 'src'}", "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    row = next(line for line in res.stdout.splitlines() if line.startswith("| runs | tf/0 |"))
    ours, cnn, kmer = ([json.loads(p.read_text())["test"]["mcc"]
                        for p in sorted((tmp_path / d / "runs" / "tf" / "0").glob(f"seed*/{f}"))]
                       for d, f in (("runs", "metrics.json"), ("refs", "baselines/cnn.json"),
                                    ("refs", "baselines/kmer.json")))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3" and cells[3].startswith(f"{100 * np.mean(ours):.2f} ± ")
    assert cells[5].startswith(f"{100 * np.mean(cnn):.2f}") and cells[6].startswith(f"{100 * np.mean(kmer):.2f}")
    gap = 100 * (np.mean(ours) - np.mean(cnn))
    assert cells[7] == f"{gap:+.2f}" and cells[8] == ("yes" if gap >= -3 else "no")
    assert res.stdout.count("| runs | tf/0 | ") == 1 + 3  # the task row and one row per seed


def test_kmer_order_probe_selects_c_on_dev_for_each_k_alone():
    """scripts/kmer_order_probe.py: one row per k, each the k-mer baseline's best-on-dev C among that k's fits."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from kmer_order_probe import probe
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from mergedna.baselines import KmerSettings, train_kmer
    from mergedna.data.tasks import load_task
    from mergedna.finetune import FinetuneSettings, prepare_splits

    task_dir = FIXTURES / "tasks" / "gue" / "splice3"
    rows = probe(str(task_dir), ks=(1, 2, 3))
    assert [r["k"] for r in rows] == [1, 2, 3]
    splits, _ = prepare_splits(load_task(task_dir), FinetuneSettings())
    grid = train_kmer(splits, 3, settings=KmerSettings(ks=(1, 2, 3)))["grid"]  # every (k, C) fitted on train, scored on dev
    for r in rows:
        best = max((g for g in grid if g["k"] == r["k"]), key=lambda g: g["dev"]["mcc"])
        assert (r["C"], r["dev"]) == (best["C"], best["dev"]["mcc"])
