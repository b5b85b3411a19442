"""Supervised baselines (mergedna.baselines): they learn on real data, and select on dev only.

Data: the UCI splice-junction set embedded in the package (3,186 real 60-bp sequences, 3 classes),
split 80/10/10 exactly as ``mergedna finetune`` splits a single file.
"""

import dataclasses

import numpy as np
import pytest

from mergedna.baselines import CNNSettings, KmerSettings, baseline_on_task, kmer_codes, train_cnn, train_kmer
from mergedna.data.tasks import load_task
from mergedna.demo import embedded
from mergedna.finetune import FinetuneSettings, prepare_splits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splice():
    task = load_task(embedded("splice.csv"), "csv")
    splits, _ = prepare_splits(task, FinetuneSettings(precision="fp32"))
    return task, splits


def adversarial(splits):
    """The splits with test replaced by dev under rotated labels: whatever is best on dev is bad on
    this test, so a selection that looked at test would choose differently."""
    dev = splits["dev"]
    rotated = dataclasses.replace(dev, labels=(dev.labels + 1) % 3)
    return {**splits, "test": rotated}


def test_kmer_codes_count_each_kmer_without_n_inside_one_sequence():
    from mergedna.data.tasks import LabelledSplit
    from mergedna.vocab import encode

    seqs = [encode("ACGTA"), encode("GNAC")]
    split = LabelledSplit(tokens=np.concatenate(seqs), offsets=np.array([0, 5, 9]), labels=np.array([0, 1]),
                          names=["a", "b"], files=["x"], file_index=np.zeros(2, np.int32), lines=np.array([1, 2]))
    row, code = kmer_codes(split, 2)
    # AC CG GT TA in row 0; AC in row 1 (GN and NA hold N; "AG" across the boundary is not a k-mer)
    assert row.tolist() == [0, 0, 0, 0, 1]
    assert code.tolist() == [0 * 4 + 1, 1 * 4 + 2, 2 * 4 + 3, 3 * 4 + 0, 0 * 4 + 1]


def test_baselines_beat_chance_on_real_splice_data(splice):
    task, splits = splice
    cnn = train_cnn(splits, 3, seed=0, settings=CNNSettings(epochs=3))
    kmer = train_kmer(splits, 3, seed=0, settings=KmerSettings(ks=(3, 4), cs=(0.1,)))
    # chance is MCC 0 and accuracy ~0.52 (majority class); the CNN sees the junction at its offset
    assert cnn["test"]["mcc"] > 0.6 and cnn["test"]["accuracy"] > 0.75
    assert kmer["test"]["mcc"] > 0.25
    for r in (cnn, kmer):
        assert r["test_evaluations"] == 1 and r["seconds"] > 0
    assert cnn["steps"] == 3 * -(-len(splits["train"]) // 64) and cnn["sequences_per_s"] > 0
    assert len(cnn["dev_curve"]) == 3 and cnn["best_dev"] == cnn["dev_curve"][cnn["best_epoch"] - 1]["dev"]


def test_cnn_step_cap_stops_mid_epoch_at_another_models_budget(splice):
    """max_steps gives the CNN exactly another model's training budget: it stops there, mid-epoch,
    evaluates dev at that point, and says how many sequences it saw."""
    _, splits = splice
    capped = train_cnn(splits, 3, seed=0, settings=CNNSettings(max_steps=50))
    per_epoch = -(-len(splits["train"]) // 64)
    assert 50 > per_epoch  # the cap falls in the second epoch
    assert capped["steps"] == 50 and [c["step"] for c in capped["dev_curve"]] == [per_epoch, 50]
    seen = len(splits["train"]) + (50 - per_epoch) * 64  # one whole epoch, then full batches
    assert capped["sequences_seen"] == seen and capped["epochs_done"] == round(seen / len(splits["train"]), 3)
    assert capped["test_evaluations"] == 1


def test_baselines_select_on_dev_only(splice):
    _, splits = splice
    bad = adversarial(splits)
    kw = dict(settings=KmerSettings(ks=(2, 3, 4), cs=(0.001, 1.0)))
    honest, probed = train_kmer(splits, 3, **kw), train_kmer(bad, 3, **kw)
    assert probed["selected"] == honest["selected"] and probed["best_dev"] == honest["best_dev"]
    assert probed["test"]["mcc"] < 0  # the adversarial test really punishes the dev choice
    cnn_kw = dict(seed=1, settings=CNNSettings(epochs=4))
    honest, probed = train_cnn(splits, 3, **cnn_kw), train_cnn(bad, 3, **cnn_kw)
    assert probed["best_epoch"] == honest["best_epoch"] and probed["dev_curve"] == honest["dev_curve"]
    assert probed["test"]["mcc"] < 0


def test_baseline_on_task_uses_the_finetune_split(splice):
    task, splits = splice
    r = baseline_on_task("kmer", task, seed=0, split_seed=0)
    assert r["task"]["sizes"] == {k: len(v) for k, v in splits.items()}
    assert "single file" in r["task"]["dev_source"] and "git_commit" in r and r["seed"] == 0
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_on_task("svm", task)


def test_demo_closing_text_reads_the_numbers():
    from mergedna.demo import _metrics_table, closing_text

    task = {"sizes": {"train": 2548, "dev": 320, "test": 318}}
    dev = {"mcc": 0.5}

    def row(mcc, **kw):
        return {"test": {"mcc": mcc, "accuracy": 0.5, "f1": 0.5}, "best_dev": dev, "seconds": 3.0, "task": task, **kw}

    rows = {"pre": row(0.66, steps=800), "scratch": row(0.41, steps=800),
            "cnn": row(0.89, baseline="cnn", epochs=10, best_epoch=9),
            "kmer": row(0.50, baseline="kmer", selected={"k": 6, "C": 0.01})}
    text = closing_text(rows, "tiny", 3)
    assert "best test MCC here is cnn (0.890)" in text and "a gain of +0.250" in text
    assert "ahead of the better MergeDNA row by 0.230" in text and "318-sequence test set" in text
    table = _metrics_table(rows)
    assert "| cnn | 0.5000 | 0.8900 |" in table and "k=6, C=0.01 (dev grid)" in table
