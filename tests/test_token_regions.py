"""Token length by region class (mergedna.token_regions, scripts/token_regions.py) on the chr20
fixture slice and the RefSeq exons of its two genes (tests/fixtures/README.md)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from mergedna_testing import FIXTURES, REPO
from mergedna.seqio import iter_fasta
from mergedna.token_regions import (CLASSES, N_CLASS, bootstrap_means, call_repeats, class_labels, class_sums,
                                    read_refseq_exons, region_classes)
from mergedna.vocab import encode

pytestmark = pytest.mark.usefixtures("one_thread")
CHR20 = FIXTURES / "chr20_slice.fa"
EXONS = FIXTURES / "chr20_slice_refseq_exons.txt"
RECORD = "20:30000001-30006000"


def slice_ids():
    return dict(iter_fasta(CHR20))[RECORD]


def test_classes_on_the_fixture_slice():
    ids = slice_ids()
    labels, info = region_classes(ids, RECORD, 0, read_refseq_exons(EXONS))
    # by hand from the 7 SAF rows (1-based inclusive): gene 245934 ends at 30000641 (exon 30000425-30000641),
    # gene 245935 starts at 30003051 (exon 30003051-30003066); slice base k is chr20 30000001 + k
    expect = np.full(6000, CLASSES.index("intron"), dtype=np.uint8)
    expect[424:641] = CLASSES.index("exon")
    expect[641:3050] = CLASSES.index("intergenic")
    expect[3050:3066] = CLASSES.index("exon")
    calls = call_repeats("".join("ACGTN"[i] for i in ids))
    for s, e in calls["sdust"] + calls["str"]:
        keep = expect[s:e] != CLASSES.index("exon")
        expect[s:e][keep] = CLASSES.index("repeat")
    assert np.array_equal(labels, expect)
    assert (labels == CLASSES.index("exon")).sum() == 233
    assert info["union_bases"] > 0 and (labels == CLASSES.index("repeat")).sum() > 0  # the slice has calls


def test_repeat_callers_find_a_planted_microsatellite_and_a_poly_a():
    rng = np.random.default_rng(0)
    bg = "".join(rng.choice(list("ACGT"), 400))
    seq = bg[:100] + "CA" * 15 + bg[100:200] + "A" * 40 + bg[200:]
    calls = call_repeats(seq)
    assert (100, 130) in calls["str"]
    assert any(s <= 230 and e >= 270 for s, e in calls["sdust"])
    labels = class_labels(encode(seq), [], calls["str"] + calls["sdust"])
    assert (labels[100:130] == CLASSES.index("repeat")).all() and labels[0] == CLASSES.index("intergenic")
    assert class_labels(encode("ACGTN"), [], [])[4] == N_CLASS


def test_class_sums_use_the_midpoint_base_and_bootstrap_brackets_the_mean():
    assign = torch.tensor([[0, 0, 0, 1, 2, 2]])  # tokens [0,3) [3,4) [4,6): midpoints 1, 3, 4
    labels = np.array([[0, 2, 2, 2, 1, 3]], dtype=np.uint8)
    lengths, counts = class_sums(assign, labels)
    assert lengths.tolist() == [[0, 2, 4, 0]] and counts.tolist() == [[0, 1, 2, 0]]
    rng = np.random.default_rng(1)
    lengths, counts = rng.integers(1, 50, (40, 4)).astype(float), rng.integers(1, 20, (40, 4)).astype(float)
    out = bootstrap_means(lengths, counts, 300, 0)
    for c, name in enumerate(CLASSES):
        r = out[name]
        assert r["mean_token_length"] == pytest.approx(lengths[:, c].sum() / counts[:, c].sum())
        assert r["ci95"][0] < r["mean_token_length"] < r["ci95"][1] and r["bootstrap_sd"] > 0


def load_script():
    spec = importlib.util.spec_from_file_location("token_regions_script", REPO / "scripts" / "token_regions.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_on_the_fixture(tmp_path, checkpoint):
    script = load_script()
    argv = ["--model", f"tiny={checkpoint}", "--fasta", str(CHR20), "--exons", str(EXONS), "--region", RECORD,
            "--windows", "12", "--window", "1024", "--bootstrap", "50", "--name", "t", "--results-dir", str(tmp_path)]
    assert script.main(argv) == 0
    res = json.loads((tmp_path / "t" / "regions.json").read_text())
    assert (tmp_path / "t" / "regions.png").stat().st_size > 5000
    md = (tmp_path / "t" / "regions.md").read_text()
    assert "| exon |" in md and res["meta"]["git_commit"] in md
    tok = res["tokenizers"]
    assert list(tok) == ["tiny", "untrained (tiny)", "run-length (tiny)", "fixed spans of 2"]
    assert tok["tiny"]["classes"] == tok["untrained (tiny)"]["classes"]  # the checkpoint is the seed-0 init
    for name, t in tok.items():
        assert t["overall_mean_token_length"] == 2.0  # 1024-base windows at ratio 0.5, and fixed spans of 2
        assert sum(c["tokens"] for c in t["classes"].values()) == 12 * 512
    assert all(c["mean_token_length"] in (None, 2.0) for c in tok["fixed spans of 2"]["classes"].values())
    assert sum(res["class_bases_in_windows"].values()) == 12 * 1024
    assert res["models"]["tiny"]["untrained_seed"] == 0


def test_script_bad_region_exit_2(tmp_path, checkpoint, capsys):
    script = load_script()
    rc = script.main(["--model", str(checkpoint), "--fasta", str(CHR20), "--exons", str(EXONS), "--region",
                      f"{RECORD}:1-9000", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "ends after record" in err
