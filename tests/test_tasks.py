"""Labelled task loaders, splits and batching (mergedna.data.tasks / task_batching).

Fixtures under tests/fixtures/tasks/ are rows of tests/fixtures/splice_sample.csv laid out in each
benchmark format (see the README there). GUE itself is read from ../shared/data/gue when present.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mergedna.data.task_batching import (
    LengthBucketSampler,
    SequenceTooLongError,
    apply_length_policy,
    average_chunk_logits,
    collate_labelled,
    make_dataloader,
)
from mergedna.data.tasks import (
    LabelledSplit,
    Task,
    load_csv_task,
    load_fasta_task,
    load_genomic_benchmark,
    load_gue_task,
    load_nt_task,
    load_task,
    make_split,
)
from mergedna.seqio import SequenceFileError
from mergedna.vocab import PAD, InvalidSequenceError, decode

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "tasks"
SPLICE = ROOT / "tests" / "fixtures" / "splice_sample.csv"
GUE = ROOT.parent / "shared" / "data" / "gue"


def read_rows(path, delimiter=","):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def seqs(split):
    return [decode(split.sequence(i)) for i in range(len(split))]


def test_gue_layout():
    task = load_gue_task(FIX / "gue" / "splice3")
    assert task.name == "gue/splice3" and task.metric == "mcc" and task.missing_splits == ()
    assert list(task.splits) == ["train", "dev", "test"]
    assert task.label_names == ["0", "1", "2"] and task.num_classes == 3
    for split in ("train", "dev", "test"):
        rows = read_rows(FIX / "gue" / "splice3" / f"{split}.csv")
        assert seqs(task[split]) == [r["sequence"] for r in rows]
        assert task[split].labels.tolist() == [int(r["label"]) for r in rows]
        assert task[split].lines.tolist() == list(range(2, len(rows) + 2))
    assert task["train"].where(0).endswith("train.csv, line 2")


def test_gue_without_train_loads_and_reports_it():
    task = load_gue_task(FIX / "gue" / "no_train")
    assert list(task.splits) == ["dev", "test"] and task.missing_splits == ("train",)
    assert task.label_names == ["1", "2"]  # no train: sorted labels of all splits
    fixed = load_gue_task(FIX / "gue" / "no_train", label_names=["0", "1", "2"])
    assert set(fixed["dev"].labels.tolist()) == {1, 2}
    with pytest.raises(KeyError, match="no 'train' split"):
        task["train"]


def test_genomic_benchmarks_folders():
    task = load_genomic_benchmark(FIX / "gb_folder")
    assert task.metric == "accuracy" and task.missing_splits == ()
    assert task.label_names == ["ei", "ie", "n"]
    train = task["train"]
    assert len(train) == 9 and len(task["test"]) == 6
    assert train.names[:3] == ["1", "2", "10"]  # numeric-aware file order
    assert train.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert seqs(train)[2] == (FIX / "gb_folder" / "train" / "ei" / "10.txt").read_text().strip()


def test_genomic_benchmarks_csv_export():
    task = load_genomic_benchmark(FIX / "gb_csv")
    rows = read_rows(FIX / "gb_csv" / "train.csv")
    assert task.label_names == ["ei", "ie", "n"] and list(task.splits) == ["train", "test"]
    assert seqs(task["train"]) == [r["seq"] for r in rows]
    assert [task.label_names[k] for k in task["train"].labels] == [r["label"] for r in rows]


def test_nucleotide_transformer_csv_and_fna():
    task = load_nt_task(FIX / "nt" / "splice_sites_donors")
    rows = read_rows(FIX / "nt" / "splice_sites_donors" / "test.csv")
    assert task.metric == "accuracy" and task.missing_splits == ()
    assert task["test"].names == [r["name"] for r in rows]
    assert task["test"].labels.tolist() == [int(r["label"]) for r in rows]
    fna = load_nt_task(FIX / "nt" / "fna_task", name="promoter_tata")
    assert fna.metric == "f1" and fna.label_names == ["0", "1"]
    assert fna["train"].names[0] == "uci_ie_22" and fna["train"].labels.tolist() == [1, 1, 0, 0]
    assert load_task(FIX / "nt" / "fna_task", "nt").metric == "mcc"


def test_generic_tsv_named_columns():
    path = FIX / "generic" / "junctions.tsv"
    task = load_csv_task(path, sequence_column="dna", label_column="junction", name_column="record")
    rows = read_rows(path, delimiter="\t")
    split = task["all"]
    assert task.name == "junctions" and list(task.splits) == ["all"]
    assert split.names == [r["record"] for r in rows] and seqs(split) == [r["dna"] for r in rows]
    assert [task.label_names[k] for k in split.labels] == [r["junction"] for r in rows]
    with pytest.raises(SequenceFileError, match=r"junctions\.tsv, line 1: no label column"):
        load_csv_task(path)


def test_generic_semicolon_sniffed_and_headerless(tmp_path):
    rows = read_rows(SPLICE)[:4]
    (tmp_path / "a.txt").write_text("".join(f"{r['label']};{r['sequence']}\n" for r in rows))
    task = load_csv_task(tmp_path / "a.txt", sequence_column=1, label_column=0, header=False)
    assert seqs(task["all"]) == [r["sequence"] for r in rows]
    assert task["all"].lines.tolist() == [1, 2, 3, 4]


def test_fasta_with_labels():
    task = load_fasta_task(FIX / "fasta" / "junctions.fa")
    split = task["all"]
    assert split.names == ["uci_ei_28", "uci_ei_29", "uci_ie_28", "uci_ie_29", "uci_n_28", "uci_n_29"]
    assert split.labels.tolist() == [0, 0, 1, 1, 2, 2] and set(split.lengths.tolist()) == {60}
    assert split.lines.tolist() == [1, 5, 9, 13, 17, 21]
    by_name = {r["sequence"] for r in read_rows(SPLICE)}
    assert set(seqs(split)) <= by_name


def test_label_order_numeric_then_string(tmp_path):
    rows = read_rows(SPLICE)[:3]
    for labels, expected in (("10 2 9", ["2", "9", "10"]), ("b a 10", ["10", "a", "b"])):
        (tmp_path / "t.csv").write_text(
            "sequence,label\n" + "".join(f"{r['sequence']},{x}\n" for r, x in zip(rows, labels.split()))
        )
        assert load_csv_task(tmp_path / "t.csv").label_names == expected


def test_unseen_label_is_an_error(tmp_path):
    rows = read_rows(SPLICE)
    train = "".join(f"{r['sequence']},{r['label']}\n" for r in rows[:5])
    (tmp_path / "train.csv").write_text("sequence,label\n" + train)
    (tmp_path / "test.csv").write_text(f"sequence,label\n{rows[0]['sequence']},n\n{rows[1]['sequence']},weird\n")
    with pytest.raises(SequenceFileError, match=r"test\.csv, line 3: label 'weird' of split 'test'"):
        load_gue_task(tmp_path)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("sequence,label\n{s},n\n{s},ei,extra\n", 3, "expected 2 fields, found 3"),
        ("sequence,class_name\n{s},n\n", 1, "no label column"),
        ("sequence,label\n{s},n\n\n,ei\n", 4, "empty sequence"),
        ("sequence,label\n{s},n\n{s},\n", 3, "empty label"),
        ("sequence,label\n{s},n\n{s}X,ie\n", 3, "invalid character 'X' at position 61"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "broken.csv"
    path.write_text(text.format(s=read_rows(SPLICE)[0]["sequence"]))
    with pytest.raises((SequenceFileError, InvalidSequenceError), match=message) as err:
        load_csv_task(path)
    assert str(path) in str(err.value) and f"line {line}" in str(err.value)


def test_fasta_header_without_label(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">a label=n\nACGT\n>b no_label_here\nACGT\n")
    with pytest.raises(SequenceFileError, match=r"x\.fa, line 3: no label in header"):
        load_fasta_task(path)


def test_make_split_stratified_and_deterministic():
    task = load_csv_task(SPLICE)
    counts = np.bincount(task["all"].labels)
    new = make_split(task, (0.5, 0.25, 0.25), seed=3)
    assert isinstance(new, Task) and list(new.splits) == ["train", "dev", "test"] and new.missing_splits == ()
    assert new.label_names == task.label_names == ["ei", "ie", "n"]
    for name, frac in (("train", 0.5), ("dev", 0.25), ("test", 0.25)):
        assert np.all(np.abs(np.bincount(new[name].labels, minlength=3) - frac * counts) < 1)
    names = [n for s in new.splits.values() for n in s.names]
    assert sorted(names) == sorted(task["all"].names)  # every row exactly once
    again = make_split(task, (0.5, 0.25, 0.25), seed=3)
    assert all(again[s].names == new[s].names for s in new.splits)
    assert make_split(task, (0.5, 0.25, 0.25), seed=4)["test"].names != new["test"].names
    odd = make_split(task["all"], (0.7, 0.3), seed=0, stratify=True)  # 40 per class: 28 / 12
    assert set(odd) == {"train", "test"} and np.bincount(odd["test"].labels).tolist() == [12, 12, 12]
    assert len(make_split(task["all"], (0.9, 0.0, 0.1), stratify=False)) == 2
    with pytest.raises(ValueError, match="already has splits"):
        make_split(new)


def test_bucket_sampler_covers_once_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(50, 500, size=1003)
    sampler = LengthBucketSampler(lengths, batch_size=16, seed=7, bucket_size=160)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 63
    assert sorted(i for b in epoch0 for i in b) == list(range(1003))
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(i for b in epoch1 for i in b) == list(range(1003))
    padded = sum(len(b) * lengths[b].max() for b in epoch0)
    plain = sum(len(b) * lengths[b].max() for b in np.array_split(np.arange(1003), 63))
    assert padded - lengths.sum() < 0.3 * (plain - lengths.sum())  # bucketing cuts padding
    evals = list(LengthBucketSampler(lengths, 16, shuffle=False))
    assert np.all(np.diff(lengths[np.concatenate(evals)]) >= 0)
    dropped = LengthBucketSampler(lengths, 16, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 62 and all(len(b) == 16 for b in dropped)
    shards = [list(LengthBucketSampler(lengths, 16, seed=7, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 32
    assert set(i for s in shards for b in s for i in b) == set(range(1003))


def test_collate_shapes_padding_mask():
    split = load_gue_task(FIX / "gue" / "splice3")["train"].take([0, 1, 2], [0, 0, 0], [60, 7, 33])
    batch = collate_labelled([split[i] for i in range(3)], pad_to_multiple_of=16)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (3, 64) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [60, 7, 33]
    assert torch.all(ids[~mask] == PAD) and torch.all(ids[mask] < 4)
    assert decode(ids[1, :7]) == decode(split.sequence(1))
    assert batch["labels"].tolist() == split.labels.tolist() and batch["index"].tolist() == [0, 1, 2]


def test_length_policy_error_names_file_and_line():
    split = load_gue_task(FIX / "gue" / "splice3")["dev"]
    assert apply_length_policy(split, 60) is split
    with pytest.raises(SequenceTooLongError, match=r"dev\.csv, line 2: .* has 60 bases, more than max_length 50"):
        apply_length_policy(split, 50)


def test_length_policy_truncate_centre_and_head():
    split = load_gue_task(FIX / "gue" / "splice3")["dev"]
    centre = apply_length_policy(split, 21, "truncate")
    head = apply_length_policy(split, 21, "truncate", truncate="head")
    for i in range(len(split)):
        text = decode(split.sequence(i))
        assert decode(centre.sequence(i)) == text[19:40] and decode(head.sequence(i)) == text[:21]
    assert centre.parent is None and centre.labels.tolist() == split.labels.tolist()


def test_length_policy_chunk_and_average_back():
    split = load_gue_task(FIX / "gue" / "splice3")["test"]
    chunks = apply_length_policy(split, 25, "chunk", overlap=5)  # 60 bp: starts 0, 20, 35
    assert len(chunks) == 3 * len(split) and set(chunks.lengths.tolist()) == {25}
    assert chunks.parent.tolist() == np.repeat(np.arange(len(split)), 3).tolist()
    text = decode(split.sequence(1))
    assert [decode(chunks.sequence(k)) for k in (3, 4, 5)] == [text[0:25], text[20:45], text[35:60]]
    assert chunks.labels.tolist() == np.repeat(split.labels, 3).tolist()
    loader = make_dataloader(split, batch_size=4, max_length=25, policy="chunk", overlap=5, seed=1)
    logits, parents = [], []
    for batch in loader:
        logits.append(batch["input_ids"][:, :2].float())  # any per-chunk numbers
        parents.append(batch["parent"])
    logits, parents = torch.cat(logits), torch.cat(parents)
    averaged = average_chunk_logits(logits, parents)
    assert averaged.shape == (len(split), 2)
    expected = torch.stack([logits[parents == p].mean(0) for p in range(len(split))])
    torch.testing.assert_close(averaged, expected)
    with pytest.raises(ValueError, match="no chunk"):
        average_chunk_logits(logits[parents != 2], parents[parents != 2], num_parents=len(split))


@pytest.mark.skipif(not (GUE / "tf" / "0").is_dir(), reason="shared GUE copy not present")
def test_real_gue_tf0_row_counts():
    task = load_gue_task(GUE / "tf" / "0")
    assert task.name == "tf/0" and task.missing_splits == () and task.label_names == ["0", "1"]
    for split in ("train", "dev", "test"):
        rows = read_rows(GUE / "tf" / "0" / f"{split}.csv")
        assert len(task[split]) == len(rows)
        assert np.bincount(task[split].labels).tolist() == np.bincount([int(r["label"]) for r in rows]).tolist()
    assert isinstance(task["train"], LabelledSplit)
