"""Tokenizer diagnostics (mergedna.tokenizer_stats): exact values on hand-made tokenizations, the
run-length baseline, the `tokenizer-stats` command on the chr20 fixture, and the validation rows of
a short pretraining run."""

import json
import shutil

import numpy as np
import pytest
import torch

import mergedna.tokenizer_stats as ts
from mergedna_testing import FIXTURES, read_fasta_simple
from mergedna.cli import main
from mergedna.config import preset
from mergedna.model import MergeDNAForPretraining, MergeDNAModel
from mergedna.training.plots import plot_curves
from mergedna.vocab import PAD, encode

pytestmark = pytest.mark.usefixtures("one_thread")
CHR20 = FIXTURES / "chr20_slice.fa"
RECORD = "20:30000001-30006000"


def ids_of(*seqs, n=8):
    out = torch.full((len(seqs), n), PAD, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = torch.from_numpy(encode(s).astype(np.int64))
    return out


# row 0: AA|C|GT|T|N A   row 1: CCC|A + padding (whose assign changes, and must not count)
IDS = ids_of("AACGTTNA", "CCCA")
MASK = IDS != PAD
MODEL = torch.tensor([[0, 0, 1, 2, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3, 4, 5]])
PAIRS2 = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 1, 1, 2, 2, 3, 3]])


def test_counts_and_rates_on_hand_made_tokenizations():
    assert ts.boundaries(MODEL, MASK).nonzero().tolist() == [[0, 1], [0, 2], [0, 4], [0, 5], [1, 2]]
    s = ts.summarise(ts.collect_counts(IDS, MASK, {"model": MODEL, "pairs": PAIRS2}))
    m, p = s["model"], s["pairs"]
    assert m["mean_token_length"] == pytest.approx(12 / 7)  # 12 bases, 5 + 2 tokens
    # called-base pairs (N pairs left out): at boundaries A|C C|G T|T C|A (1 equal of 4);
    # within AA GT CC CC (3 equal of 4)
    assert m["p_equal_at_boundary"] == pytest.approx(1 / 4)
    assert m["p_equal_within"] == pytest.approx(3 / 4)
    # boundaries: model {1,2,4,5} + {2}; pairs {1,3,5} + {1}; shared {1,5}
    assert p["f1_vs_model"] == pytest.approx(2 * 2 / (5 + 4))
    assert p["pair_agreement_vs_model"] == pytest.approx(5 / 10)  # 4 of 7 pairs in row 0, 1 of 3 in row 1
    assert ts.boundary_f1(MODEL, PAIRS2, MASK) == pytest.approx(4 / 9)
    assert torch.equal(ts.boundaries(ts.fixed_span_assign(MASK, 2), MASK), ts.boundaries(PAIRS2, MASK))
    row = ts.flat_row(s)
    assert row["tok_mean_token_length"] == pytest.approx(12 / 7)
    assert row["tok_pairs_f1_vs_model"] == pytest.approx(4 / 9)


def runs_collapsed(seq: str) -> str:
    return "".join(c for i, c in enumerate(seq) if i == 0 or c != seq[i - 1])


@pytest.mark.parametrize("repeat", [2, 3])
def test_run_length_merges_only_identical_neighbours_when_the_budget_allows(chr20, repeat):
    """Real chr20 bases with runs collapsed, each letter then written `repeat` times: there are at
    least as many equal-neighbour pairs as the merges the budget asks for (ratio 0.5)."""
    text = runs_collapsed(read_fasta_simple(CHR20)[RECORD][:1000])
    rows = [text[:120] * 1, text[200:290]]
    seqs = ["".join(c * repeat for c in r) for r in rows]
    ids = ids_of(*seqs, n=max(map(len, seqs)))
    mask = ids != PAD
    assign = ts.run_length_assign(ids, mask, 0.5, steps=4)
    c = ts.summarise(ts.collect_counts(ids, mask, {"model": assign}))["model"]
    assert c["p_equal_within"] == 1.0  # no token holds two different letters
    lengths = mask.sum(1)
    tokens = ts.tokenization_counts(ids[:1], assign[:1], mask[:1])["tokens"]
    assert tokens == int(torch.round(0.5 * lengths[0].float()))  # the model's budget, met exactly
    if repeat == 2:  # exactly enough equal pairs: every doubled letter is one token
        for b, n in enumerate(lengths.tolist()):
            assert assign[b, :n].tolist() == (torch.arange(n) // 2).tolist()


def test_run_length_has_the_local_encoders_token_budget(chr20):
    ids = torch.from_numpy(chr20[:3 * 700].astype(np.int64)).view(3, 700).clone()
    ids[1, 500:] = PAD
    mask = ids != PAD
    torch.manual_seed(0)
    local = MergeDNAModel(preset("tiny")).eval().local_encoder
    with torch.no_grad():
        model = local(ids, mask, 0.45).assign
    rl = ts.run_length_assign(ids, mask, 0.45, 4)
    for b in range(3):
        n = int(mask[b].sum())
        assert len(set(rl[b, :n].tolist())) == len(set(model[b, :n].tolist()))


def run_stats(argv, capsys):
    rc = main(["tokenizer-stats", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_command_on_the_fixture(tmp_path, checkpoint, capsys):
    out = tmp_path / "stats.json"
    rc, text, _ = run_stats(["--model", str(checkpoint), "--fasta", str(CHR20), "--region", RECORD,
                             "--out", str(out)], capsys)
    assert rc == 0
    assert "run-length, same budget" in text and "fixed spans of 2" in text
    res = json.loads(out.read_text())
    tok = res["tokenizers"]
    assert set(tok) == {"model", "untrained", "run_length", "fixed2"}
    assert res["reference_seed"] == 0 and res["meta"]["git_commit"]
    # the conftest checkpoint is the seed-0 initialisation itself: the untrained reference agrees exactly
    assert tok["untrained"]["f1_vs_model"] == 1.0
    # 6000 bases in windows of 1024 (5 full + 880): every count is even, so both budgets give 2.0 exactly
    assert tok["model"]["mean_token_length"] == tok["fixed2"]["mean_token_length"] == 2.0
    assert tok["run_length"]["mean_token_length"] == 2.0
    assert tok["model"]["counts"]["bases"] == 6000
    assert 0 < tok["run_length"]["f1_vs_model"] < 1 and 0 < tok["fixed2"]["f1_vs_model"] < 1


def test_command_reference_is_the_seeded_initialisation(tmp_path, capsys):
    torch.manual_seed(1)
    MergeDNAForPretraining(preset("tiny")).save_pretrained(tmp_path / "m1")
    f1 = {}
    for seed in (None, 1):
        extra = [] if seed is None else ["--reference-seed", str(seed)]
        rc, _, _ = run_stats(["--model", str(tmp_path / "m1"), "--fasta", str(CHR20), "--region", RECORD,
                              "--out", str(tmp_path / "s.json"), *extra], capsys)
        assert rc == 0
        f1[seed] = json.loads((tmp_path / "s.json").read_text())["tokenizers"]["untrained"]["f1_vs_model"]
    assert f1[1] == 1.0 and f1[None] < 0.95  # default seed 0 is another initialisation


def test_command_bad_region_is_one_line_exit_2(tmp_path, checkpoint, capsys):
    rc, _, err = run_stats(["--model", str(checkpoint), "--fasta", str(CHR20), "--region", "7:1-100",
                            "--out", str(tmp_path / "x.json")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "chr20_slice.fa" in err
    assert not (tmp_path / "x.json").exists()


def val_rows(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["split"] == "val"}


def test_pretraining_validation_rows_carry_the_diagnostics(tmp_path):
    from test_trainer import small_run
    from mergedna.training.trainer import pretrain

    frozen = tmp_path / "frozen"
    pretrain(small_run(frozen, steps=1, val_every=1, lr=0.0))  # lr 0: the model stays its initialisation
    row = val_rows(frozen)[1]
    for key in ("tok_mean_token_length", "tok_p_equal_at_boundary", "tok_p_equal_within", "tok_untrained_f1_vs_model",
                "tok_run_length_f1_vs_model", "tok_fixed2_f1_vs_model", "tok_fixed2_pair_agreement_vs_model"):
        assert key in row, key
    assert row["tok_untrained_f1_vs_model"] == 1.0 and row["tok_run_length_f1_vs_model"] < 1.0
    assert row["tok_mean_token_length"] == pytest.approx(2.0, abs=0.02)
    assert plot_curves(frozen / "metrics.jsonl", tmp_path / "c.png")
    import matplotlib.pyplot as plt

    img = plt.imread(tmp_path / "c.png")[..., :3]
    assert img.shape[1] > 1.4 * 11 * 110  # a third panel
    right = img[:, 2 * img.shape[1] // 3:]
    assert ((right.max(-1) - right.min(-1)) > 0.3).sum() > 200  # with coloured curves in it


def test_resumed_run_keeps_the_initialisation_as_reference(tmp_path):
    """The reference is the seeded initialisation, not the checkpoint the run resumes from."""
    from test_trainer import small_run
    from mergedna.training.trainer import pretrain

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    pretrain(small_run(full, steps=4, val_every=2, ckpt_every=2, lr=2e-2, warmup=1))
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-00000002", resumed / "checkpoints" / "step-00000002")
    pretrain(small_run(resumed, steps=4, val_every=2, ckpt_every=2, lr=2e-2, warmup=1, resume=True))
    a, b = val_rows(full)[4], val_rows(resumed)[4]
    assert {k: v for k, v in a.items() if k.startswith("tok_")} == {k: v for k, v in b.items() if k.startswith("tok_")}
