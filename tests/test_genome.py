"""Genome data layer: FASTA reading and caching, and the stateless window sampler."""

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mergedna import seqio, vocab
from mergedna.seqio import SequenceFileError
from mergedna.data import genome as genome_mod
from mergedna.data.genome import Genome, GenomeSampler, holdout_intervals

FIXTURE = Path(__file__).parent / "fixtures" / "chr20_slice.fa"
REC0, REC1 = "20:59001-61000", "20:30000001-30006000"  # 2,000 bases (first 1,000 N) and 6,000 bases


def bgzf(data: bytes, block: int = 1000) -> bytes:
    """BGZF (bgzip) encoding: gzip members with a 'BC' extra field, then the empty EOF block."""
    out = b""
    for i in range(0, len(data) + 1, block):
        piece = data[i : i + block]
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        cdata = comp.compress(piece) + comp.flush()
        header = b"\x1f\x8b\x08\x04" + b"\0" * 4 + b"\0\xff" + struct.pack("<H2sHH", 6, b"BC", 2, 25 + len(cdata))
        out += header + cdata + struct.pack("<II", zlib.crc32(piece), len(piece))
    return out


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.fixture
def chr20(tmp_path):
    return Genome.from_fasta(FIXTURE, cache_dir=tmp_path / "cache")


def fixture_sequences() -> dict[str, str]:
    seqs, name = {}, None
    for line in FIXTURE.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            seqs[name] = ""
        else:
            seqs[name] += line.strip()
    return seqs


# ---- reading -------------------------------------------------------------------------


def test_plain_gzip_and_bgzip_give_identical_ids(tmp_path, chr20):
    raw = FIXTURE.read_bytes()
    for name, data in (("s.fa.gz", gzip.compress(raw)), ("s.fa.bgz", bgzf(raw))):
        other = Genome.from_fasta(write(tmp_path / name, data), cache_dir=tmp_path / "cache")
        assert np.array_equal(np.asarray(other.ids), np.asarray(chr20.ids))
        assert [(r.name, r.offset, r.length) for r in other.records] == [
            (r.name, r.offset, r.length) for r in chr20.records
        ]


def test_records_offsets_names_and_fetch(tmp_path, chr20):
    seqs = fixture_sequences()
    assert [(r.name, r.offset, r.length) for r in chr20.records] == [(REC0, 0, 2000), (REC1, 2000, 6000)]
    assert len(chr20) == 8000
    for name, seq in seqs.items():
        assert np.array_equal(chr20.fetch(name), vocab.encode(seq))
    assert np.array_equal(chr20.fetch(1, 10, 70), vocab.encode(seqs[REC1][10:70]))
    assert (chr20.fetch(REC0, 0, 1000) == vocab.N).all() and (chr20.fetch(REC0, 1000) != vocab.N).any()
    with pytest.raises(IndexError):
        chr20.fetch(0, 1990, 2001)
    # several files: offsets continue across files, each record remembers its file
    extra = write(tmp_path / "extra.fa", ">e1 some description\nACGT\nAC\n>e2\n\nGG\n")
    both = Genome.from_fasta([FIXTURE, extra], cache_dir=tmp_path / "cache")
    assert [(r.name, r.offset, r.length) for r in both.records[2:]] == [("e1", 8000, 6), ("e2", 8006, 2)]
    assert both.records[0].file == os.path.abspath(FIXTURE) and both.records[2].file == str(extra)
    assert vocab.decode(both.fetch("e1")) == "ACGTAC"


def test_lower_case_iupac_and_u_follow_the_vocabulary(tmp_path):
    g = Genome.from_fasta(write(tmp_path / "x.fa", ">r\r\nacgtN\r\nRYkmU\r\n"), cache_dir=tmp_path / "c")
    assert vocab.decode(g.fetch("r")) == "ACGTNNNNNT"


@pytest.mark.parametrize("chunk", [1, 7, 61, 4096])
def test_chunk_boundaries_do_not_change_ids_or_error_positions(tmp_path, monkeypatch, chr20, chunk):
    monkeypatch.setattr(seqio, "CHUNK_BYTES", chunk)
    small = Genome.from_fasta(FIXTURE, cache_dir=tmp_path / "small")
    assert np.array_equal(np.asarray(small.ids), np.asarray(chr20.ids)) and small.records == chr20.records
    assert np.array_equal(small.count_n([0, 900], [8000, 2100]), chr20.count_n([0, 900], [8000, 2100]))
    bad = write(tmp_path / "bad.fa", ">a\n" + "ACGTACGTAC\n" * 9 + "ACGTAXGTAC\n")
    with pytest.raises(vocab.InvalidSequenceError, match="position 96 .*line 11"):
        Genome.from_fasta(bad, cache_dir=tmp_path / "small")


def test_count_n_matches_brute_force(chr20):
    ids = np.asarray(chr20.ids)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 8000, 500)
    ends = np.minimum(starts + rng.integers(0, 3000, 500), 8000)
    brute = [np.count_nonzero(ids[a:b] == vocab.N) for a, b in zip(starts, ends)]
    assert chr20.count_n(starts, ends).tolist() == brute


def test_invalid_character_names_file_record_position_and_line(tmp_path):
    bad = write(tmp_path / "bad.fa", ">a\nACGT\n>b desc\nACGT\nAC!T\n")
    with pytest.raises(vocab.InvalidSequenceError) as info:
        Genome.from_fasta(bad, cache_dir=tmp_path / "cache")
    err = info.value
    assert (err.file, err.record, err.position, err.line, err.char) == (str(bad), "b", 7, 5, "!")
    assert str(bad) in str(err) and "'b'" in str(err) and "position 7" in str(err) and "line 5" in str(err)
    assert not any((tmp_path / "cache").iterdir())  # no half-written cache is left behind


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"\n\n", "empty"), (b"ACGT\n>a\nACGT\n", "not FASTA"), (gzip.compress(b"ACGT\n"), "not FASTA")],
)
def test_non_fasta_and_empty_files_are_rejected(tmp_path, content, message):
    path = write(tmp_path / "in.fa", content)
    with pytest.raises(SequenceFileError, match=message) as info:
        Genome.from_fasta(path, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)


# ---- cache ---------------------------------------------------------------------------


def test_cache_is_reused_and_invalidated_when_the_file_changes(tmp_path, monkeypatch):
    path = write(tmp_path / "g.fa", FIXTURE.read_bytes())
    cache = tmp_path / "cache"
    first = Genome.from_fasta(path, cache_dir=cache)
    assert not first.cache_hit and first.cache_path.parent == cache
    mtime = first.cache_path.stat().st_mtime_ns

    def no_parse(*args):
        raise AssertionError("re-parsed a cached genome")

    with monkeypatch.context() as m:
        m.setattr(genome_mod, "_parse_fasta", no_parse)
        again = Genome.from_fasta(path, cache_dir=cache)
    assert again.cache_hit and again.cache_path.stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(again.ids), np.asarray(first.ids))

    write(path, ">new\nACGTTT\n")
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    changed = Genome.from_fasta(path, cache_dir=cache)
    assert not changed.cache_hit and vocab.decode(changed.fetch("new")) == "ACGTTT"
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 3 and not any(f.endswith(".tmp") for f in files)  # stale cache removed


def test_damaged_cache_is_rebuilt_and_pickling_reopens_the_memmap(tmp_path, chr20):
    chr20.cache_path.unlink()
    rebuilt = Genome.from_fasta(FIXTURE, cache_dir=tmp_path / "cache")
    assert not rebuilt.cache_hit and np.array_equal(np.asarray(rebuilt.ids), np.asarray(chr20.ids))
    blob = pickle.dumps(rebuilt)
    assert len(blob) < 2000  # the bases are not copied into the pickle
    clone = pickle.loads(blob)
    assert isinstance(clone.ids, np.memmap) and np.array_equal(np.asarray(clone.ids), np.asarray(rebuilt.ids))
    assert clone.records == rebuilt.records and clone.count_n([0], [8000]) == rebuilt.count_n([0], [8000])


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEDNA_CACHE", str(tmp_path / "env_cache"))
    g = Genome.from_fasta(FIXTURE)
    assert g.cache_path.parent == tmp_path / "env_cache"


# ---- sampler -------------------------------------------------------------------------


def record_of(g: Genome, starts: np.ndarray) -> np.ndarray:
    return np.searchsorted([r.offset for r in g.records], starts, side="right") - 1


def test_batches_are_pure_functions_of_seed_rank_and_step(chr20):
    make = lambda **kw: GenomeSampler(chr20, window=256, **kw)  # noqa: E731
    a, b = make(seed=3), make(seed=3)
    x = a.batch(5, 8)
    assert x.shape == (8, 256) and x.dtype == torch.long
    assert torch.equal(x, b.batch(5, 8)) and torch.equal(x, a.batch(5, 8))
    assert not torch.equal(x, a.batch(6, 8))
    assert not torch.equal(x, make(seed=3, rank=1, world_size=2).batch(5, 8))
    assert not torch.equal(x, make(seed=4).batch(5, 8))


def test_windows_stay_inside_one_record_and_respect_the_n_filter(chr20):
    window = 1200
    sampler = GenomeSampler(chr20, window=window, max_n_fraction=0.1, val=0.0)
    lengths = np.array([r.length for r in chr20.records])
    offsets = np.array([r.offset for r in chr20.records])
    for step in range(30):
        starts, _ = sampler.draw(step, 16)
        rec = record_of(chr20, starts)
        assert (starts + window <= offsets[rec] + lengths[rec]).all()
        assert (sampler.batch(step, 16) == vocab.N).sum(1).max() <= 0.1 * window
    # without the filter, record 0's N-heavy windows (its first 1,000 bases are N) do show up
    loose = GenomeSampler(chr20, window=window, max_n_fraction=1.0, val=0.0)
    assert max((loose.batch(s, 16) == vocab.N).sum(1).max() for s in range(30)) > 0.1 * window


def test_holdout_specs():
    class Fake:
        records = [genome_mod.Record(REC0, "f", 0, 2000), genome_mod.Record(REC1, "f", 2000, 6000)]
        record_index = Genome.record_index

    g = Fake()
    assert holdout_intervals(g, 0.01) == [(0, 1980, 2000), (1, 5940, 6000)]
    assert holdout_intervals(g, REC1) == [(1, 0, 6000)]  # a name that looks like a region is a name
    assert holdout_intervals(g, f"{REC1}:1,001-3000") == [(1, 1000, 3000)]
    assert holdout_intervals(g, [f"{REC1}:1-10", f"{REC1}:5-20"]) == [(1, 0, 20)]
    for bad in ("chrZ", f"{REC1}:0-10", f"{REC1}:10-6001"):
        with pytest.raises((ValueError, KeyError)):
            holdout_intervals(g, bad)


@pytest.mark.parametrize("val", [0.1, REC1, f"{REC1}:1001-3000"])
def test_train_never_touches_heldout_and_val_lies_inside_it(chr20, val):
    window = 200
    held = np.zeros(len(chr20), dtype=bool)
    for i, a, b in holdout_intervals(chr20, val):
        held[chr20.records[i].offset + a : chr20.records[i].offset + b] = True
    train = GenomeSampler(chr20, window=window, val=val, seed=1)
    covered = np.zeros(len(chr20), dtype=bool)
    for step in range(40):
        for s in train.draw(step, 32)[0]:
            assert not held[s : s + window].any()
            covered[s : s + window] = True
    assert covered[~held].mean() > 0.5  # training does reach the rest of the genome
    val_sampler = GenomeSampler(chr20, window=window, val=val, split="val", seed=1)
    for starts in (train.val_starts(64), val_sampler.draw(0, 32)[0]):
        assert all(held[s : s + window].all() for s in starts)


def test_val_batches_fixed_unaugmented_and_sharded_by_rank(chr20):
    kw = dict(window=256, val=REC1, rc_prob=1.0, seed=2)
    one = GenomeSampler(chr20, **kw)
    batches = one.val_batches(20, 8)
    assert [tuple(b.shape) for b in batches] == [(8, 256), (8, 256), (4, 256)]
    assert all(torch.equal(x, y) for x, y in zip(batches, GenomeSampler(chr20, **kw).val_batches(20, 8)))
    starts = one.val_starts(20)
    expected = np.stack([chr20.ids[s : s + 256] for s in starts])
    assert np.array_equal(torch.cat(batches).numpy(), expected)  # no reverse complement
    shards = [GenomeSampler(chr20, rank=r, world_size=3, **kw).val_starts(20) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(starts.tolist())


def test_rc_augmentation_returns_genome_windows_or_their_reverse_complements(chr20):
    text = np.asarray(chr20.ids).tobytes()
    sampler = GenomeSampler(chr20, window=300, rc_prob=0.5, val=0.0, seed=7)
    kinds = set()
    for step in range(10):
        starts, rc = sampler.draw(step, 8)
        batch = sampler.batch(step, 8).numpy().astype(np.uint8)
        for row, s, flipped in zip(batch, starts, rc):
            forward = np.asarray(chr20.ids[s : s + 300])
            assert np.array_equal(row, vocab.reverse_complement(forward) if flipped else forward)
            found = text.find(row.tobytes()) >= 0 or text.find(vocab.reverse_complement(row).tobytes()) >= 0
            assert found
            kinds.add(bool(flipped))
    assert kinds == {True, False}


def test_sampler_rejects_impossible_settings(chr20):
    with pytest.raises(ValueError, match="no 7000-base window"):
        GenomeSampler(chr20, window=7000)
    with pytest.raises(ValueError):
        GenomeSampler(chr20, split="test")
    with pytest.raises(ValueError, match="max-n-fraction"):
        GenomeSampler(chr20, window=1500, max_n_fraction=0.1, val=REC1).batch(0, 4)  # record 0: 1,000 N
