"""benchmarks/suite.py: the --quick run end to end on the fixture FASTA, and its target logic.

Speed itself is not asserted (STYLE: benchmarks measure it); this checks that one command
produces every section, a complete targets table and its files.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mergedna_testing import FIXTURES, REPO

SUITE = REPO / "benchmarks" / "suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("bench_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_suite(tmp_path, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SUITE), "--quick", "--threads", "1", "--fasta", str(FIXTURES / "chr20_slice.fa"),
           "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / "out" / "suite.json").read_text()), res.stdout


@pytest.mark.slow
def test_quick_run_has_every_section(tmp_path):
    res, stdout = run_suite(tmp_path, "--label", "smoke")
    for section in ("peak", "mergedna", "peers", "scaling", "sampler", "finetune", "targets"):
        assert res.get(section), section
    assert {(r["model"], r["mode"], r["length"]) for r in res["finetune"]} == {
        (m, k, n) for m in ("mergedna", "cnn") for k in ("train", "eval") for n in res["settings"]["ft_lengths"]}
    assert all(r["seq_per_s"] > 0 and r["bp_per_s"] == pytest.approx(r["seq_per_s"] * r["length"])
               for r in res["finetune"])
    assert res["peak"][res["settings"]["autocast"]] > 0 and res["peak"]["fp32"] > 0 and "end" in res["peak"]
    assert {(r["model"], r["mode"]) for r in res["mergedna"]} == {("mergedna", "train"), ("mergedna", "inference")}
    assert {(r["model"], r["mode"]) for r in res["peers"]} == {(m, k) for m in ("esm", "bert")
                                                               for k in ("train", "inference")}
    for r in res["mergedna"] + res["peers"]:
        assert r["bp_per_s"] > 0 and r["flops"] > 0 and 0 < r["utilisation"]
        assert len(r["times"]) == res["settings"]["repeats"]
    esm = next(r for r in res["peers"] if r["model"] == "esm" and r["mode"] == "train")
    assert esm["tokens"] == round(res["settings"]["length"] / 6)
    scaling = res["scaling"]
    assert [(r["target"], r["length"]) for r in scaling] == [
        (t, n) for t in ("local_encoder", "whole_model") for n in res["settings"]["scaling_lengths"]]
    assert all(r["status"] == "ok" and r["peak_rss_gb"] > 0 for r in scaling)
    assert "time_exponent" in scaling[1] and "flags" in scaling[1]
    assert res["sampler"]["bp_per_s"] > 0
    assert len(res["targets"]) == 4 and all(t["status"] in ("PASS", "MISS") for t in res["targets"])
    meta = res["meta"]
    assert meta["label"] == "smoke" and meta["machine"]["cpu"] and meta["date"] and "--quick" in meta["command"]
    md = (tmp_path / "out" / "suite.md").read_text()
    assert "## Targets" in md and meta["machine"]["cpu"] in md
    history = (tmp_path / "out" / "suite_history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["meta"]["label"] == "smoke"
    assert "targets:" in stdout


def test_only_runs_the_named_section(tmp_path):
    res, _ = run_suite(tmp_path, "--only", "sampler")
    assert res["sampler"]["bp_per_s"] > 0
    for section in ("peak", "mergedna", "peers", "scaling"):
        assert res[section] == {"status": "not run"}
    statuses = {t["target"].split()[0]: t["status"] for t in res["targets"]}
    assert statuses["training"] == "not run" and statuses["sampler"] == "not run"


def test_targets_and_growth_flags():
    suite = load_suite()
    res = {"settings": {"presets": ["small"]},
           "mergedna": [{"key": "mergedna_small_train", "model": "mergedna", "mode": "train", "bp_per_s": 1000.0,
                         "gflops_per_s": 60.0, "utilisation": 0.3}],
           "peers": [{"key": "esm_small_train", "model": "esm", "mode": "train", "gflops_per_s": 30.0,
                      "utilisation": 0.4}],
           "scaling": [{"target": "local_encoder", "status": "ok", "length": n, "s_per_mbp": s, "seconds": s * n,
                        "flops": n, "rss_delta_gb": 0.001 * n * m}
                       for n, s, m in ((1024, 1.0, 1), (16384, 1.4, 1), (32768, 1.4, 4))],
           "sampler": {"bp_per_s": 19_000.0}}
    suite.growth_flags(res["scaling"])
    targets = {t["target"]: t for t in suite.check_targets(res)}
    util, vs_esm, local, sampler = targets.values()
    assert util["status"] == "PASS" and util["ratio"] == pytest.approx(1.0)
    assert vs_esm["status"] == "MISS" and vs_esm["value"] == pytest.approx(2.0)
    assert "unreachable" in vs_esm["note"] and "120%" in vs_esm["note"]  # 3 x 40% of the peak
    assert "N=16384" in local["target"] and local["status"] == "MISS" and local["ratio"] == pytest.approx(1.3 / 1.4)
    assert sampler["status"] == "MISS" and sampler["value"] == pytest.approx(19.0)
    assert any("time super-linear" in f for f in res["scaling"][1]["flags"])
    assert any("memory super-linear" in f for f in res["scaling"][2]["flags"])
    assert not any("time" in f for f in res["scaling"][2]["flags"])


def test_compiled_workloads_are_named_apart():
    """--compile adds a second MergeDNA with compiled blocks; its rows must not overwrite the eager ones."""
    import torch

    suite = load_suite()
    ids = torch.randint(0, 4, (1, 64))
    eager, eager_info = suite.mergedna_workloads("tiny", ids)
    compiled, compiled_info = suite.mergedna_workloads("tiny", ids, compile=True)
    assert set(eager) == {"mergedna_tiny_train", "mergedna_tiny_inference"}
    assert set(compiled) == {"mergedna_tiny_train_compiled", "mergedna_tiny_inference_compiled"}
    assert all(i["compiled"] for i in compiled_info.values()) and not any(i["compiled"] for i in eager_info.values())
    assert compiled_info["mergedna_tiny_train_compiled"]["flops"] == eager_info["mergedna_tiny_train"]["flops"]


@pytest.mark.slow
def test_before_after_of_two_commits_and_the_profile(tmp_path):
    """ab_commits measures two checkouts alternately and records the ratio; profile_step writes its table."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ab = [sys.executable, str(REPO / "benchmarks" / "ab_commits.py"), "--before", "HEAD", "--after", "HEAD",
          "--label", "same code", "--presets", "tiny", "--length", "256", "--steps", "1", "--rounds", "2",
          "--threads", "1", "--out-dir", str(tmp_path)]
    res = subprocess.run(ab, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    row = json.loads((tmp_path / "optimisations.jsonl").read_text())
    assert row["before"] == row["after"] and len(row["before_runs"]) == len(row["after_runs"]) == 2
    assert row["before_bp_per_s"] > 0 and row["speedup"] > 0
    assert "| same code | tiny | train |" in (tmp_path / "optimisations.md").read_text()
    prof = [sys.executable, str(REPO / "benchmarks" / "profile_step.py"), "--preset", "tiny", "--length", "256",
            "--warmup", "1", "--steps", "1", "--threads", "1", "--precision", "fp32", "--out-dir", str(tmp_path)]
    res = subprocess.run(prof, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "profile_tiny_train_256_fp32.md").read_text()
    assert "| matmul |" in table and "`aten::mm`" in table
