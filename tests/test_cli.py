"""The command line on real fixture files: info, and clear one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from mergedna_testing import FIXTURES
from mergedna.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mergedna.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,total", [("tiny", "0.61M"), ("paper", "379.79M")])
def test_info_prints_module_counts_and_shapes(capsys, name, total):
    assert main(["info", "--preset", name, "--length", "1000"]) == 0
    out = capsys.readouterr().out
    assert f"{total} parameters" in out and "local_encoder" in out and "(B, 500," in out


def test_info_json_and_checkpoint(tmp_path, capsys):
    from mergedna.config import preset
    from mergedna.model import MergeDNAForPretraining

    MergeDNAForPretraining(preset("tiny", merge_ratio=0.25)).save_pretrained(tmp_path / "m")
    assert main(["info", "--model", str(tmp_path / "m"), "--length", "400", "--json"]) == 0
    out = capsys.readouterr().out
    assert "(B, 100, 64)" in out
    assert json.loads(out[out.index("{"):])["config"]["merge_ratio"] == 0.25


def test_bad_character_in_fasta_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nACGTACGT\n>broken\nACGTAC\nGTXACG\n")
    res = run_cli("pretrain", "--fasta", str(bad), "--out", str(tmp_path / "run"), "--preset", "tiny",
                  "--window", "4", "--steps", "1", "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "bad.fa" in err and "broken" in err and "position 9" in err and "'X'" in err
    assert not (tmp_path / "run" / "model").exists()


def test_missing_input_and_malformed_task(tmp_path):
    res = run_cli("pretrain", "--fasta", str(tmp_path / "nope.fa"), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "nope.fa" in res.stderr and "Traceback" not in res.stderr
    rows = (FIXTURES / "splice_sample.csv").read_text().splitlines()
    bad = tmp_path / "task.csv"
    bad.write_text("\n".join(rows[:5] + ["ACGTNNACGT"] + rows[5:20]) + "\n")  # a row without a label
    res = run_cli("finetune", "--preset", "tiny", "--task", str(bad), "--layout", "csv", "--out", str(tmp_path / "ft"))
    assert res.returncode == 2 and "task.csv" in res.stderr and "line 6" in res.stderr, res.stderr


def test_pretrain_reads_a_toml_config_and_flags_override_it(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'''fasta = ["{FIXTURES / "chr20_slice.fa"}"]
preset = "tiny"
window = 128
batch_size = 2
steps = 50
val = "20:59001-61000"
val_windows = 2
progress = false

[objective]
lambda_latent = 0.5
''')
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(cfg), "--steps", "2", "--out", str(out), "--ratio-std", "0"]) == 0
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["train"]["steps"] == 2 and saved["train"]["window"] == 128  # the flag wins over the file
    assert saved["objective"]["lambda_latent"] == 0.5 and saved["objective"]["ratio_std"] == 0.0
