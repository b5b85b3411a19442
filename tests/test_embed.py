"""Embeddings (mergedna.embed) on the committed real fixtures: splice_sample.csv and chr20_slice.fa."""

import argparse
import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import mergedna.commands.embed as embed_cmd
import mergedna.embed as embed_mod
from mergedna.embed import embed_file, embed_sequences, load_encoder
from mergedna.merging import unmerge
from mergedna.vocab import InvalidSequenceError, decode, encode, reverse_complement

from mergedna_testing import FIXTURES, read_fasta_simple

CHR20 = FIXTURES / "chr20_slice.fa"
SPLICE = FIXTURES / "splice_sample.csv"


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def encoder(checkpoint):
    return load_encoder(checkpoint)


@pytest.fixture(scope="module")
def splice_seqs():
    with open(SPLICE) as fh:
        return [row["sequence"] for row in csv.DictReader(fh)][:6]


def rc(seq: str) -> str:
    return decode(reverse_complement(encode(seq)))


def test_pooled_and_per_base_shapes_and_meaning(encoder, splice_seqs):
    pooled = embed_sequences(encoder, splice_seqs)
    per_base = embed_sequences(encoder, splice_seqs, per_base=True)
    assert pooled.shape == (6, 64) and pooled.dtype == np.float32
    assert [x.shape for x in per_base] == [(60, 64)] * 6
    with torch.no_grad():
        ids = torch.from_numpy(encode(splice_seqs[0]).astype(np.int64))[None]
        out = encoder(ids)
        expected = unmerge(out.last_hidden_state, out.assign)[0].numpy()  # each base its token's vector
    np.testing.assert_allclose(per_base[0], expected, atol=1e-5)
    # the pooled vector is the mean over bases of the per-base vectors (size-weighted token mean)
    np.testing.assert_allclose(pooled, np.stack([x.mean(0) for x in per_base]), atol=1e-5)
    # batch composition does not matter
    np.testing.assert_allclose(embed_sequences(encoder, splice_seqs, batch_size=1), pooled, atol=1e-5)


def test_rc_average_is_the_mean_of_both_strands(encoder, splice_seqs):
    fwd, rev = embed_sequences(encoder, splice_seqs), embed_sequences(encoder, [rc(s) for s in splice_seqs])
    np.testing.assert_allclose(embed_sequences(encoder, splice_seqs, rc_average=True), (fwd + rev) / 2, atol=1e-5)
    fwd_b = embed_sequences(encoder, splice_seqs[:2], per_base=True)
    rev_b = embed_sequences(encoder, [rc(s) for s in splice_seqs[:2]], per_base=True)
    both = embed_sequences(encoder, splice_seqs[:2], per_base=True, rc_average=True)
    for got, f, r in zip(both, fwd_b, rev_b):
        np.testing.assert_allclose(got, (f + r[::-1]) / 2, atol=1e-5)  # reverse strand flipped back


def test_long_sequence_in_overlapping_chunks(encoder):
    seq = read_fasta_simple(CHR20)["20:30000001-30006000"][:3000]
    length, overlap = 1024, 256
    starts, s = [], 0
    while True:  # windows of 1024 every 768 bases, the last one ending at the sequence end
        starts.append(min(s, len(seq) - length))
        if s + length >= len(seq):
            break
        s += length - overlap
    assert starts == [0, 768, 1536, 1976]
    chunks = [seq[s : s + length] for s in starts]
    alone = embed_sequences(encoder, chunks)
    pooled = embed_sequences(encoder, [seq], chunk_length=length, chunk_overlap=overlap)
    np.testing.assert_allclose(pooled[0], alone.mean(0), atol=1e-5)  # equal lengths: equal weights
    alone_b = embed_sequences(encoder, chunks, per_base=True)
    total, count = np.zeros((len(seq), 64)), np.zeros((len(seq), 1))
    for s, vec in zip(starts, alone_b):
        total[s : s + length] += vec
        count[s : s + length] += 1
    per_base = embed_sequences(encoder, [seq], per_base=True, chunk_length=length, chunk_overlap=overlap)
    np.testing.assert_allclose(per_base[0], total / count, atol=1e-5)
    default = embed_sequences(encoder, [seq], chunk_overlap=overlap)  # chunk length defaults to max_length
    np.testing.assert_allclose(default, pooled, atol=1e-6)


def test_embed_file_npy_sidecar_and_parquet(tmp_path, checkpoint, encoder, splice_seqs):
    parser = argparse.ArgumentParser(prog="mergedna")
    embed_cmd.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "chr20.npy"
    args = parser.parse_args(["embed", "--model", str(checkpoint), "--input", str(CHR20), "--out", str(out),
                              "--batch-size", "4", "--no-progress"])
    assert args.func(args) == 0
    records = read_fasta_simple(CHR20)
    array = np.load(out)
    assert array.shape == (2, 64)
    np.testing.assert_allclose(array, embed_sequences(encoder, list(records.values())), atol=1e-5)
    with open(tmp_path / "chr20.ids.tsv") as fh:
        side = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["id"] for r in side] == list(records) and [int(r["length"]) for r in side] == [2000, 6000]

    base_out = tmp_path / "splice_bases.npy"
    embed_file(encoder, SPLICE, base_out, per_base=True, progress=False)
    assert np.load(base_out).shape == (120 * 60, 64)
    np.testing.assert_allclose(np.load(base_out)[60:120], embed_sequences(encoder, splice_seqs[1:2], per_base=True)[0],
                               atol=1e-5)

    pq_out = tmp_path / "splice.parquet"
    embed_file(encoder, SPLICE, pq_out, progress=False, batch_size=16)
    table = pq.read_table(pq_out)
    assert table.num_rows == 120 and table.column_names == ["id", "length", "embedding"]
    assert table["id"][0].as_py() == "splice_sample.csv:2" and table["length"][0].as_py() == 60
    np.testing.assert_allclose(np.array(table["embedding"].to_pylist()[:6]), embed_sequences(encoder, splice_seqs),
                               atol=1e-5)
    pb = pq.read_table(embed_file(encoder, CHR20, tmp_path / "b.parquet", per_base=True, progress=False)["out"])
    assert pb.num_rows == 8000 and pb["position"][2000].as_py() == 0


def test_bad_character_fails_cleanly_without_output(tmp_path, encoder):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">one\nACGTACGTAC\n>two\nACGTTTGCA\n>three\nACGTAC\nGTXAC\n")
    out = tmp_path / "emb.npy"
    with pytest.raises(InvalidSequenceError) as err:
        embed_file(encoder, fasta, out, progress=False)
    message = str(err.value)
    assert str(fasta) in message and "'three'" in message and "position 9" in message and "'X'" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.fa"]


def test_error_while_writing_leaves_no_output(tmp_path, encoder, monkeypatch):
    calls = []
    real = embed_mod._run

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second block's second batch: the first block is already written
            raise RuntimeError("simulated crash mid-file")
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_mod, "_run", failing)
    for name in ("emb.npy", "emb.parquet"):
        calls.clear()
        with pytest.raises(RuntimeError, match="simulated"):
            embed_file(encoder, SPLICE, tmp_path / name, progress=False, batch_size=8, block_bases=16 * 60)
        assert list(tmp_path.iterdir()) == []
