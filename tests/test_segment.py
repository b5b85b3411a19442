"""Token boundaries and per-region token statistics (mergedna.segment) on chr20_slice.fa and the
RefSeq exon BED fixture (tests/fixtures/README.md)."""

import argparse
import csv
import json

import numpy as np
import pytest
import torch

import mergedna.commands.segment as segment_cmd
from mergedna.embed import load_encoder
from mergedna.segment import parse_region, read_annotation, record_regions, segment_fasta
from mergedna.vocab import encode

from mergedna_testing import FIXTURES, read_fasta_simple

CHR20 = FIXTURES / "chr20_slice.fa"
BED = FIXTURES / "chr20_slice_exons.bed"
RECORD = "20:30000001-30006000"


pytestmark = pytest.mark.usefixtures("one_thread")



def run_cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="mergedna")
    segment_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["segment", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def read_tokens(path):
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def runs_of(assign: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of equal values, by a plain loop."""
    spans, start = [], 0
    for j in range(1, len(assign) + 1):
        if j == len(assign) or assign[j] != assign[start]:
            spans.append((start, j))
            start = j
    return spans


def test_printed_boundaries_match_assign(tmp_path, checkpoint, capsys):
    out = run_cli(["--model", str(checkpoint), "--fasta", str(CHR20), "--region", RECORD, "--show", "300",
                   "--out", str(tmp_path)], capsys)
    lines = out.splitlines()
    assert lines[0].startswith(f">{RECORD} bases 1-6000: 6000 bases")
    body = lines[1 : next(i for i, line in enumerate(lines) if line.startswith("..."))]
    assert all(len(line) <= 80 for line in body) and all(len(line) == 80 for line in body[:-1])
    printed = "".join(body).split("|")
    seq = read_fasta_simple(CHR20)[RECORD]
    encoder = load_encoder(checkpoint)
    with torch.no_grad():  # the first window (max_length = 1024 bases) through the whole encoder
        assign = encoder(torch.from_numpy(encode(seq[:1024]).astype(np.int64))[None]).assign[0].numpy()
    spans = runs_of(assign)
    assert printed == [seq[s:e] for s, e in spans[: len(printed)]]
    assert sum(map(len, printed[:-1])) < 300 <= sum(map(len, printed))
    tokens = read_tokens(tmp_path / "tokens.tsv")
    starts, ends = (np.array([int(t[k]) for t in tokens]) for k in ("start", "end"))
    assert [(s, e) for s, e in zip(starts, ends)][: len(spans)] == spans
    assert starts[0] == 0 and ends[-1] == 6000 and (starts[1:] == ends[:-1]).all()
    assert set(range(0, 6000, 1024)) <= set(starts.tolist())  # windows are tokenized apart
    assert all(t["record"] == RECORD and int(t["length"]) == int(t["end"]) - int(t["start"]) for t in tokens)
    assert (tmp_path / "token_lengths.png").stat().st_size > 0


def expected_stats(tokens, exons):
    """Per-type stats computed token by token from the TSV: midpoint base decides the type."""
    by_type = {"exon": [], "other": []}
    for t in tokens:
        s, e = int(t["start"]), int(t["end"])
        mid = (s + e - 1) // 2
        kind = "exon" if any(a <= mid < b for a, b in exons) else "other"
        by_type[kind].append(e - s)
    return by_type


def test_region_stats_on_refseq_exons(tmp_path, checkpoint, capsys):
    out = run_cli(["--model", str(checkpoint), "--fasta", str(CHR20), "--bed", str(BED), "--out", str(tmp_path)],
                  capsys)
    stats = json.loads((tmp_path / "region_stats.json").read_text())["types"]
    assert list(stats) == ["exon", "other"]
    tokens = read_tokens(tmp_path / "tokens.tsv")
    exons = [(30000424 - 30000000, 30000641 - 30000000), (30003050 - 30000000, 30003066 - 30000000)]
    on_record = [t for t in tokens if t["record"] == RECORD]
    by_type = expected_stats(on_record, exons)
    by_type["other"] += [int(t["length"]) for t in tokens if t["record"] != RECORD]  # no exon on the first slice
    for kind, lengths in by_type.items():
        assert stats[kind]["tokens"] == len(lengths) > 0
        assert stats[kind]["mean_token_length"] == pytest.approx(np.mean(lengths))
        assert stats[kind]["median_token_length"] == pytest.approx(np.median(lengths))
    assert stats["exon"]["regions"] == 2 and stats["exon"]["bases"] == 217 + 16
    assert stats["other"]["bases"] == 2000 + 6000 - 233
    assert [t["region_type"] for t in on_record] == [
        "exon" if any(a <= (int(t["start"]) + int(t["end"]) - 1) // 2 < b for a, b in exons) else "other"
        for t in on_record]
    assert "exon" in out and "other" in out


def test_gff_annotation_gives_the_same_stats(tmp_path, checkpoint, capsys):
    gff = tmp_path / "exons.gff3"
    rows = [line.split("\t") for line in BED.read_text().splitlines()]
    gff.write_text("##gff-version 3\n" + "".join(
        f"20\tRefSeq\texon\t{int(r[1]) + 1}\t{r[2]}\t.\t{r[5]}\t.\tID=e{i}\n" for i, r in enumerate(rows)))
    run_cli(["--model", str(checkpoint), "--fasta", str(CHR20), "--region", RECORD, "--gff", str(gff),
             "--out", str(tmp_path / "gff")], capsys)
    run_cli(["--model", str(checkpoint), "--fasta", str(CHR20), "--region", RECORD, "--bed", str(BED),
             "--out", str(tmp_path / "bed")], capsys)
    gff_stats = json.loads((tmp_path / "gff" / "region_stats.json").read_text())["types"]
    assert gff_stats == json.loads((tmp_path / "bed" / "region_stats.json").read_text())["types"]


def test_sub_region_and_annotation_mapping(tmp_path, capsys):
    out = run_cli(["--preset", "tiny", "--fasta", str(CHR20), "--region", f"{RECORD}:401-700", "--all",
                   "--bed", str(BED), "--out", str(tmp_path)], capsys)
    assert "random weights" in out
    tokens = read_tokens(tmp_path / "tokens.tsv")
    assert int(tokens[0]["start"]) == 400 and int(tokens[-1]["end"]) == 700
    stats = json.loads((tmp_path / "region_stats.json").read_text())["types"]
    assert stats["exon"]["regions"] == 1 and stats["exon"]["bases"] == 641 - 424  # inside [400, 700)
    assert stats["other"]["bases"] == 300 - (641 - 424)
    assert parse_region("chr1:1,001-2,000") == ("chr1", 1000, 2000) and parse_region("chrM") == ("chrM", None, None)
    annotation = read_annotation(BED, "bed")
    assert record_regions(annotation, RECORD, 6000) == [(424, 641, "exon"), (3050, 3066, "exon")]
    assert record_regions(annotation, "chr20", 30000500) == [(30000424, 30000500, "exon")]
    assert record_regions(annotation, "20:59001-61000", 2000) == []


@pytest.mark.parametrize("precision, autocast_on", [("fp32", False), ("bf16", True)])
def test_segment_precision_reaches_the_tokenizer(checkpoint, precision, autocast_on):
    """--precision is not only recorded: the tokenizer runs under bf16 autocast exactly when asked."""
    encoder = load_encoder(checkpoint)
    seen = []
    encoder.local_encoder.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    segs = segment_fasta(encoder, CHR20, [RECORD], precision=precision)
    assert seen and set(seen) == {autocast_on}
    assert segs[0].starts[0] == 0 and segs[0].ends[-1] == 6000
