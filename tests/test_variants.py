"""Zero-shot variant scoring (mergedna.variants, score-variants, eval-variants) on the BRCA1 fixture:
12 real SGE variants and 3 kb of GRCh38 chr17 around them (tests/fixtures/README.md)."""

import csv
import gzip
import json

import numpy as np
import pytest
import torch

from mergedna.cli import main
from mergedna.data.vcf import read_vcf
from mergedna.heads import MergeDNAForSequenceClassification
from mergedna.model import MergeDNAForPretraining, MergeDNAModel
from mergedna.config import preset
from mergedna.variants import auroc, bootstrap_interval, context_window, evaluate
from mergedna.vocab import MASK, N, encode

from mergedna_testing import FIXTURES, SHARED_DATA, read_fasta_simple

FASTA = FIXTURES / "variants" / "brca1_exon5_region.fa"
VCF = FIXTURES / "variants" / "brca1_sge_sample.vcf"
REGION_START = 43103501  # 1-based chromosome position of the fixture record's first base
WINDOW = ["--window", "200"]  # 99 bases each side (an even window loses one base); the last variant meets the record end

pytestmark = pytest.mark.usefixtures("one_thread")


def score(tmp_path, capsys, *extra, vcf=VCF, fasta=FASTA, model=("--preset", "tiny"), name="s.tsv"):
    out = tmp_path / name
    rc = main(["score-variants", *model, "--fasta", str(fasta), "--vcf", str(vcf), "--out", str(out),
               "--no-progress", *WINDOW, *extra])
    captured = capsys.readouterr()
    return rc, out, captured


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def vcf_text(records, info_header=""):
    head = "##fileformat=VCFv4.2\n" + info_header + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    return head + "".join("\t".join(map(str, r)) + "\n" for r in records)


def test_scores_every_variant_with_info_passed_through(tmp_path, capsys):
    rc, out, cap = score(tmp_path, capsys, "--rc-average")
    assert rc == 0, cap.err
    got = rows(out)
    assert len(got) == 12
    assert list(got[0])[:8] == ["CHROM", "POS", "ID", "REF", "ALT", "llr", "llr_fwd", "llr_rev"]
    assert [r["ID"] for r in got] == [v.id for v in read_vcf(VCF).variants]
    assert got[6]["CLASS"] == "LOF" and got[6]["CSQ"] == "Missense" and got[6]["CADD"] == "28"
    summary = json.loads((tmp_path / "s.tsv.json").read_text())["summary"]
    assert summary["positions"] == 9 and summary["forwards"] == 18  # 12 alleles at 9 positions, 2 strands
    assert "variants/s" in cap.out and "scored 12 SNVs of 12 records" in cap.out


def test_ref_mismatch_is_an_error_naming_record_and_bases(tmp_path, capsys):
    text = VCF.read_text().replace("43104883\tc.286G>C\tC\tG", "43104883\tc.286G>C\tA\tG")
    bad = tmp_path / "bad.vcf"
    bad.write_text(text)
    rc, out, cap = score(tmp_path, capsys, vcf=bad)
    assert rc == 2 and not out.exists()
    assert "chr17:43104883" in cap.err and "'A'" in cap.err and "'C'" in cap.err and "line 17" in cap.err
    assert "Traceback" not in cap.err and len(cap.err.strip().splitlines()) == 1
    rc, out, cap = score(tmp_path, capsys, "--skip-ref-mismatch", vcf=bad)
    assert rc == 0 and len(rows(out)) == 11
    assert json.loads((tmp_path / "s.tsv.json").read_text())["summary"]["skipped"] == {"ref_mismatch": 1}


def test_scores_are_deterministic_and_batch_invariant(tmp_path, capsys):
    _, a, _ = score(tmp_path, capsys, "--seed", "3", name="a.tsv")
    _, b, _ = score(tmp_path, capsys, "--seed", "3", name="b.tsv")
    _, c, _ = score(tmp_path, capsys, "--seed", "3", "--batch-size", "1", name="c.tsv")
    assert a.read_text() == b.read_text()
    np.testing.assert_allclose([float(r["llr"]) for r in rows(a)], [float(r["llr"]) for r in rows(c)], atol=2e-6)


def _reverse_complement_fixture(tmp_path):
    """The fixture on the other strand: the record reverse-complemented, each variant at its mirror
    position with REF and ALT complemented."""
    seq = read_fasta_simple(FASTA)[f"chr17:{REGION_START}-{REGION_START + 2999}"]
    comp = str.maketrans("ACGT", "TGCA")
    rc_fa = tmp_path / "rc.fa"
    rc_fa.write_text(">chr17rc\n" + seq.translate(comp)[::-1] + "\n")
    recs = []
    for line in VCF.read_text().splitlines():
        if line.startswith("#"):
            continue
        f = line.split("\t")
        pos = len(seq) - (int(f[1]) - REGION_START)
        recs.append(["chr17rc", pos, f[2], f[3].translate(comp), f[4].translate(comp), *f[5:]])
    rc_vcf = tmp_path / "rc.vcf"
    rc_vcf.write_text(vcf_text(recs))
    return rc_fa, rc_vcf


def test_rc_average_is_the_same_on_the_other_strand(tmp_path, capsys):
    rc_fa, rc_vcf = _reverse_complement_fixture(tmp_path)
    _, fwd, _ = score(tmp_path, capsys, "--rc-average", name="fwd.tsv")
    rc, rev, cap = score(tmp_path, capsys, "--rc-average", vcf=rc_vcf, fasta=rc_fa, name="rev.tsv")
    assert rc == 0, cap.err
    a, b = rows(fwd), rows(rev)
    assert [r["ID"] for r in a] == [r["ID"] for r in b]
    np.testing.assert_allclose([float(r["llr"]) for r in a], [float(r["llr"]) for r in b], atol=1e-5)
    np.testing.assert_allclose([float(r["llr_fwd"]) for r in a], [float(r["llr_rev"]) for r in b], atol=1e-5)
    # one strand alone is not symmetric: the two strands do disagree
    assert max(abs(float(r["llr_fwd"]) - float(r["llr_rev"])) for r in a) > 1e-3


def test_hand_computed_llr_matches_the_command(tmp_path, capsys, checkpoint):
    rc, out, cap = score(tmp_path, capsys, "--rc-average", model=("--model", str(checkpoint)))
    assert rc == 0, cap.err
    row = next(r for r in rows(out) if r["POS"] == "43104937")  # c.232A>T, REF T, ALT A (forward strand)
    seq = read_fasta_simple(FASTA)[f"chr17:{REGION_START}-{REGION_START + 2999}"]
    i = 43104937 - REGION_START
    model = MergeDNAForPretraining.from_pretrained(checkpoint).eval()

    def llr(text, ref, alt):
        ids = torch.from_numpy(encode(text).astype(np.int64))[None]  # (1, 199), variant at 99
        with torch.no_grad():
            assign = model.mergedna(ids).assign[0]
            hit = (assign == assign[99])[None]  # (1, 199): the bases of the variant's token
            sizes.append(int(hit.sum()))
            # pass-3 tokenization: masked and visible bases as two segments, each at the merge ratio
            local = model.mergedna.local_encoder(ids.masked_fill(hit, MASK), torch.ones_like(hit), 0.5,
                                                 segments=hit.long())
            latent = model.mergedna.latent_encoder(local.tokens)
            logp = torch.log_softmax(model.decode(latent.tokens.z, local)[0, 99], -1)
        return float(logp["ACGT".index(alt)] - logp["ACGT".index(ref)])

    sizes = []
    window = seq[i - 99:i + 100]
    assert window[99] == "T"
    fwd = llr(window, "T", "A")
    rev = llr(window.translate(str.maketrans("ACGT", "TGCA"))[::-1], "A", "T")
    assert sizes[0] > 1  # the variant's token holds more bases than the variant's: masking it matters
    assert float(row["llr_fwd"]) == pytest.approx(fwd, abs=2e-6)
    assert float(row["llr_rev"]) == pytest.approx(rev, abs=2e-6)
    assert float(row["llr"]) == pytest.approx((fwd + rev) / 2, abs=2e-6)


def test_multiallelic_records_are_split(tmp_path, capsys):
    info = '##INFO=<ID=AF,Number=A,Type=Float,Description="x">\n##INFO=<ID=AD,Number=R,Type=Integer,Description="x">\n'
    multi = tmp_path / "multi.vcf"
    multi.write_text(vcf_text([["chr17", 43104858, "m1", "C", "T,G,A", ".", ".", "AF=0.1,0.2,0.3;AD=5,1,2,3;K=x"]], info))
    rc, out, cap = score(tmp_path, capsys, vcf=multi, name="m.tsv")
    assert rc == 0, cap.err
    got = rows(out)
    assert [r["ALT"] for r in got] == ["T", "G", "A"]
    assert [r["AF"] for r in got] == ["0.1", "0.2", "0.3"]
    assert [r["AD"] for r in got] == ["5,1", "5,2", "5,3"] and {r["K"] for r in got} == {"x"}
    _, single, _ = score(tmp_path, capsys, name="single.tsv")
    assert [r["llr"] for r in got] == [r["llr"] for r in rows(single)[:3]]  # the fixture's 3 split rows
    assert json.loads((tmp_path / "m.tsv.json").read_text())["summary"]["forwards"] == 1


def test_indels_and_other_non_snvs_are_skipped_and_counted(tmp_path, capsys):
    recs = [["chr17", 43104858, "a", "C", "T", ".", ".", "."],
            ["chr17", 43104858, "del", "CA", "C", ".", ".", "."],
            ["chr17", 43104858, "ins", "C", "CTT", ".", ".", "."],
            ["chr17", 43104858, "sv", "C", "<DEL>", ".", ".", "SVTYPE=DEL"],
            ["chr17", 43104858, "mnv", "CA", "TG", ".", ".", "."],
            ["chr17", 43104858, "ref", "C", ".", ".", ".", "."],
            ["chr17", 43104858, "n", "C", "N", ".", ".", "."],
            ["chr17", 43104858, "mixed", "C", "G,CT", ".", ".", "."]]
    mixed = tmp_path / "mixed.vcf"
    mixed.write_text(vcf_text(recs))
    rc, out, cap = score(tmp_path, capsys, vcf=mixed)
    assert rc == 0, cap.err
    assert [r["ID"] for r in rows(out)] == ["a", "mixed"]
    skipped = json.loads((tmp_path / "s.tsv.json").read_text())["summary"]["skipped"]
    assert skipped == {"indel": 3, "symbolic": 1, "mnv": 1, "no_alt": 1, "non_acgt": 1}
    assert "3 indel" in cap.out


def test_gzip_and_bgzip_input_sniffed_not_by_suffix(tmp_path, capsys):
    _, plain, _ = score(tmp_path, capsys, name="plain.tsv")
    text = VCF.read_bytes()
    cut = text.index(b"#CHROM")
    gz = tmp_path / "sample.vcf"  # no .gz suffix: the magic bytes decide
    gz.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))  # two members, as bgzip blocks are
    fa = tmp_path / "ref.fa"
    fa.write_bytes(gzip.compress(FASTA.read_bytes()))
    rc, out, cap = score(tmp_path, capsys, vcf=gz, fasta=fa, name="gz.tsv")
    assert rc == 0, cap.err
    assert out.read_text() == plain.read_text()


def test_chrom_and_position_outside_the_fasta(tmp_path, capsys):
    for chrom, pos, expect in (("chr5", 100, "chr5:100"), ("chr17", REGION_START + 3000, f"chr17:{REGION_START + 3000}")):
        bad = tmp_path / "out.vcf"
        bad.write_text(vcf_text([["chr17", 43104858, "ok", "C", "T", ".", ".", "."],
                                 [chrom, pos, ".", "A", "G", ".", ".", "."]]))
        rc, out, cap = score(tmp_path, capsys, vcf=bad)
        assert rc == 2 and expect in cap.err and "line 4" in cap.err, cap.err
        rc, out, cap = score(tmp_path, capsys, "--skip-outside", vcf=bad)
        assert rc == 0 and len(rows(out)) == 1
    # the plain chromosome name, without 'chr', finds the region record too
    alias = tmp_path / "alias.vcf"
    alias.write_text(vcf_text([["17", 43104883, ".", "C", "G", ".", ".", "."]]))
    rc, out, cap = score(tmp_path, capsys, vcf=alias)
    assert rc == 0 and len(rows(out)) == 1


def test_region_record_of_wrong_length_is_an_error(tmp_path, capsys):
    fa = tmp_path / "short.fa"
    fa.write_text(">chr17:43104800-43104900\n" + "ACGT" * 10 + "\n")
    rc, _, cap = score(tmp_path, capsys, fasta=fa)
    assert rc == 2 and "101 bases" in cap.err and "holds 40" in cap.err


def test_checkpoints_without_the_decoders_are_refused(tmp_path, capsys):
    torch.manual_seed(0)
    MergeDNAModel(preset("tiny")).save_pretrained(tmp_path / "enc")
    MergeDNAForSequenceClassification(preset("tiny")).save_pretrained(tmp_path / "cls")
    for name, lacking in (("enc", "lm_head, local_decoder, latent_decoder, mergedna"), ("cls", "lm_head, local_decoder")):
        rc, _, cap = score(tmp_path, capsys, model=("--model", str(tmp_path / name)))
        assert rc == 2 and "not a pretraining checkpoint" in cap.err and lacking in cap.err, cap.err


def test_context_window_edges():
    ids = np.arange(4, dtype=np.uint8).repeat(5)  # 20 bases
    w, c = context_window(ids, 10, 7)  # 3 each side, centred
    assert len(w) == 7 and c == 3 and (w == ids[7:14]).all()
    w, c = context_window(ids, 1, 7)  # shifted inside, off-centre
    assert (w == ids[0:7]).all() and c == 1
    w, c = context_window(ids, 19, 8)  # even window: 2*3+1 bases
    assert (w == ids[13:20]).all() and c == 6
    w, c = context_window(ids, 1, 7, "pad")  # centred, N fills the missing bases
    assert c == 3 and list(w[:2]) == [N, N] and (w[2:] == ids[0:5]).all()
    w, c = context_window(ids, 5, 101)  # record shorter than the window: all of it
    assert (w == ids).all() and c == 5


def test_auroc_matches_pair_counting_and_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    pos = rng.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in scores[pos] for b in scores[~pos]]
    assert auroc(scores, pos) == pytest.approx(np.mean(pairs))
    lo, hi = bootstrap_interval(scores, pos, 500, seed=1)
    assert lo < auroc(scores, pos) < hi
    assert auroc(scores, np.zeros(60, bool)) is None


def test_eval_variants_writes_table_and_metrics(tmp_path, capsys):
    _, out, _ = score(tmp_path, capsys, "--rc-average")
    rc = main(["eval-variants", "--scores", str(out), "--names", "tiny0", "--label", "CLASS", "--positive", "LOF",
               "--predictors", "CADD", "PHYLOP", "--group", "CSQ", "--group-as", "coding=Missense,Synonymous,Nonsense",
               "--group-rest", "non-coding", "--bootstrap", "50", "--out", str(tmp_path / "eval")])
    assert rc == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["auroc"]) == {"tiny0", "CADD", "PHYLOP"}
    assert set(metrics["auroc"]["CADD"]) == {"all", "coding", "non-coding"}
    assert metrics["auroc"]["CADD"]["all"]["n_pos"] == 3 and metrics["auroc"]["CADD"]["coding"]["n_neg"] == 3
    assert metrics["score_runs"]["tiny0"]["summary"]["scored"] == 12
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "| tiny0 (model, −LLR) |" in md and "variants/s" in md


@pytest.mark.skipif(not (SHARED_DATA / "brca1").is_dir(), reason="needs ../shared/data/brca1")
def test_reference_predictor_aurocs_reproduce_the_data_readme():
    """The evaluation itself, checked against the figures ../shared/data/brca1/README.md gives."""
    vs = read_vcf(SHARED_DATA / "brca1" / "findlay2018_brca1_RING_exons2-5.vcf")
    table = [{"CHROM": v.chrom, "POS": str(v.pos), "REF": v.ref, "ALT": v.alt, "llr": "0", **v.info} for v in vs.variants]
    res = evaluate({"none": table}, "CLASS", ["LOF"], ["CADD", "PHYLOP"], "CSQ",
                   {"coding": ["Missense", "Synonymous", "Nonsense"]}, "non-coding", n_boot=0)
    cadd = res["auroc"]["CADD"]
    assert [round(cadd[g]["auroc"], 3) for g in ("all", "coding", "non-coding")] == [0.756, 0.789, 0.830]
    assert round(res["auroc"]["PHYLOP"]["all"]["auroc"], 3) == 0.755
    assert cadd["all"]["n_pos"] == 273 and cadd["all"]["n_neg"] == 927
    assert res["auroc"]["none"]["all"]["auroc"] == 0.5  # a constant score: all ties


def test_base_mask_is_antisymmetric_in_ref_and_alt(tmp_path, capsys):
    """With --mask base the masked input holds nothing of REF, so writing the variant the other way round
    (ALT in the reference, REF as the allele) negates the score exactly; the token mask depends on REF
    through the tokenization of the reference window, and does not."""
    name = f"chr17:{REGION_START}-{REGION_START + 2999}"
    seq = list(read_fasta_simple(FASTA)[name])
    recs, back = [], []
    for pos, ref, alt in ((43104883, "C", "G"), (43106471, "T", "A")):  # more than a window apart
        assert seq[pos - REGION_START] == ref
        seq[pos - REGION_START] = alt
        recs.append(["chr17", pos, ".", ref, alt, ".", ".", "."])
        back.append(["chr17", pos, ".", alt, ref, ".", ".", "."])
    alt_fa = tmp_path / "alt.fa"
    alt_fa.write_text(f">{name}\n" + "".join(seq) + "\n")
    (tmp_path / "fwd.vcf").write_text(vcf_text(recs))
    (tmp_path / "back.vcf").write_text(vcf_text(back))
    gaps = {}
    for mode in ("base", "token"):
        _, a, _ = score(tmp_path, capsys, "--mask", mode, "--rc-average", vcf=tmp_path / "fwd.vcf", name=f"a_{mode}.tsv")
        _, b, _ = score(tmp_path, capsys, "--mask", mode, "--rc-average", vcf=tmp_path / "back.vcf", fasta=alt_fa,
                        name=f"b_{mode}.tsv")
        gaps[mode] = max(abs(float(x["llr"]) + float(y["llr"])) for x, y in zip(rows(a), rows(b)))
    assert gaps["base"] < 1e-5
    assert gaps["token"] > 1e-3
