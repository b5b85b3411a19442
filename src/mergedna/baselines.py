"""Supervised baselines trained on exactly the splits MergeDNA is fine-tuned on (issue 14).

Two references a reader needs beside every fine-tuning number:

* ``cnn``: the Genomic Benchmarks paper's supervised CNN (Grešová et al. 2023): an embedding of
  the bases, three blocks of Conv1d (kernel 8) / batch norm / max-pool 2 (16, 8 and 4 filters,
  ReLU after the first), flattened into a dense head (512 units, then the classes). Inputs are
  cut or padded to one fixed length (the longest training sequence; longer dev/test sequences
  are cut around their centre), so the flatten sees each base at a fixed offset. Adam (lr 1e-3),
  batch 64, 10 epochs; the epoch with the best dev metric is kept. ``max_steps`` stops it after that
  many optimiser steps instead (evaluated on dev there too): the CNN at another model's training budget.
* ``kmer``: a logistic regression on the frequencies of overlapping k-mers (k-mers holding an
  N are skipped), scaled to unit variance on train; k and the inverse regularisation C are chosen
  from a small grid on dev.

Both select on **dev only** and evaluate on test exactly once, after selection; the splits come
from :func:`mergedna.finetune.prepare_splits`, so a task without dev gets the same carved dev as
the MergeDNA run with the same ``split_seed``. Each result records its wall time, and the CNN
its steps, epochs and sequences/s.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.tasks import LabelledSplit
from .vocab import NUM_BASES, PAD, VOCAB_SIZE

BASELINES = ("cnn", "kmer")
LABELS = {"cnn": "CNN (Genomic Benchmarks)", "kmer": "k-mer logistic regression"}


@dataclass
class CNNSettings:
    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps (dev evaluated there), whatever the epochs
    batch_size: int = 64
    lr: float = 1e-3
    embedding_dim: int = 100
    select_metric: str = "mcc"


@dataclass
class KmerSettings:
    ks: tuple = (3, 4, 5, 6)
    cs: tuple = (0.01, 0.1, 1.0)
    max_iter: int = 300
    select_metric: str = "mcc"


def fixed_length_ids(split: LabelledSplit, length: int) -> torch.Tensor:
    """(n, length) long ids: each sequence cut around its centre or right-padded with PAD."""
    ids = np.full((len(split), length), PAD, dtype=np.int64)
    for i in range(len(split)):
        seq = split.sequence(i)
        start = max(0, (len(seq) - length) // 2)
        piece = seq[start:start + length]
        ids[i, :len(piece)] = piece
    return torch.from_numpy(ids)


class GenomicBenchmarksCNN(nn.Module):
    """The Genomic Benchmarks baseline CNN for inputs of ``length`` bases. (B, N) ids -> (B, C) logits."""

    def __init__(self, num_classes: int, length: int, embedding_dim: int = 100):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, embedding_dim)
        self.features = nn.Sequential(
            nn.Conv1d(embedding_dim, 16, kernel_size=8), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 8, kernel_size=8), nn.BatchNorm1d(8), nn.MaxPool1d(2),
            nn.Conv1d(8, 4, kernel_size=8), nn.BatchNorm1d(4), nn.MaxPool1d(2),
            nn.Flatten())
        n = length
        for _ in range(3):  # valid conv (kernel 8) then pool 2
            n = (n - 7) // 2
        if n < 1:
            raise ValueError(f"the CNN baseline needs sequences of at least 64 bases, got {length}")
        self.head = nn.Sequential(nn.Linear(4 * n, 512), nn.Linear(512, num_classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).transpose(1, 2)  # (B, E, N) for Conv1d
        return self.head(self.features(x))


@torch.no_grad()
def _cnn_probs(model: nn.Module, ids: torch.Tensor, batch: int = 512) -> np.ndarray:
    was = model.training
    model.eval()
    logits = torch.cat([model(ids[i:i + batch]) for i in range(0, len(ids), batch)])
    model.train(was)
    return F.softmax(logits.double(), dim=-1).numpy()


def train_cnn(splits: dict[str, LabelledSplit], num_classes: int, seed: int = 0,
              settings: CNNSettings | None = None) -> dict:
    """Train :class:`GenomicBenchmarksCNN` on ``splits["train"]``, keep the best-on-dev epoch,
    evaluate once on test. Returns the result dict described in the module docstring."""
    from .finetune import classification_metrics

    s = settings or CNNSettings()
    started = time.time()
    length = int(splits["train"].lengths.max())
    if length < 64:  # short tasks (e.g. UCI splice, 60 bp) are padded to the CNN's minimum input
        length = 64
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GenomicBenchmarksCNN(num_classes, length, s.embedding_dim)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    x = {k: fixed_length_ids(v, length) for k, v in splits.items()}
    y = torch.from_numpy(splits["train"].labels)
    curve, best, best_state, steps, seen = [], None, None, 0, 0
    train_time = 0.0
    for epoch in range(1, s.epochs + 1):
        t0 = time.time()
        model.train()
        losses = []
        for idx in torch.randperm(len(y), generator=gen).split(s.batch_size):
            if len(idx) < 2:  # batch norm needs two rows
                continue
            loss = F.cross_entropy(model(x["train"][idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            seen += len(idx)
            losses.append(loss.item())
            if steps == s.max_steps:
                break
        train_time += time.time() - t0
        dev = classification_metrics(splits["dev"].labels, _cnn_probs(model, x["dev"]))
        curve.append({"epoch": epoch, "step": steps, "train_loss": float(np.mean(losses)), "dev": dev})
        score = -math.inf if dev[s.select_metric] is None else dev[s.select_metric]
        if best is None or score > best[1]:
            best = (epoch, score, dev)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if steps == s.max_steps:
            break
    model.load_state_dict(best_state)
    test = classification_metrics(splits["test"].labels, _cnn_probs(model, x["test"]))
    return {"baseline": "cnn", "label": LABELS["cnn"], "settings": asdict(s), "input_length": length,
            "parameters": sum(p.numel() for p in model.parameters()), "dev_curve": curve,
            "best_epoch": best[0], "best_dev": best[2], "test": test, "test_evaluations": 1, "steps": steps,
            "epochs": s.epochs, "epochs_done": round(seen / len(y), 3), "sequences_seen": seen,
            "train_seconds": round(train_time, 2), "sequences_per_s": round(seen / max(train_time, 1e-9), 1),
            "seconds": round(time.time() - started, 2)}


def kmer_codes(split: LabelledSplit, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row, code)`` of every overlapping k-mer without N: code = base-4 number of the k bases."""
    tokens = split.tokens.astype(np.int64)
    n = len(tokens)
    if n < k:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.arange(n - k + 1)
    code = np.zeros(len(starts), np.int64)
    ok = np.ones(len(starts), bool)
    for j in range(k):
        b = tokens[starts + j]
        ok &= b < NUM_BASES
        code = code * NUM_BASES + np.minimum(b, NUM_BASES - 1)
    row = np.repeat(np.arange(len(split)), split.lengths)[: len(starts)]
    end_row = np.repeat(np.arange(len(split)), split.lengths)[starts + k - 1]
    ok &= row == end_row  # the k-mer must not straddle two sequences
    return row[ok], code[ok]


def kmer_features(split: LabelledSplit, k: int):
    """Sparse (n, 4**k) matrix of k-mer frequencies (counts over the sequence's k-mers)."""
    from scipy.sparse import csr_matrix

    row, code = kmer_codes(split, k)
    counts = csr_matrix((np.ones(len(row)), (row, code)), shape=(len(split), NUM_BASES ** k))
    totals = np.asarray(counts.sum(1)).ravel()
    counts = counts.multiply(1.0 / np.maximum(totals, 1)[:, None])
    return counts.tocsr()


def train_kmer(splits: dict[str, LabelledSplit], num_classes: int, seed: int = 0,
               settings: KmerSettings | None = None) -> dict:
    """Fit a logistic regression for each (k, C) of the grid on train, keep the best on dev,
    evaluate it once on test. Returns the result dict described in the module docstring."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from .finetune import classification_metrics

    s = settings or KmerSettings()
    started = time.time()
    grid, best = [], None
    for k in s.ks:
        feats = {name: kmer_features(split, k) for name, split in splits.items()}
        scaler = StandardScaler(with_mean=False).fit(feats["train"])
        feats = {name: scaler.transform(f) for name, f in feats.items()}
        for c in s.cs:
            t0 = time.time()
            clf = LogisticRegression(C=c, max_iter=s.max_iter, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(feats["train"], splits["train"].labels)
            dev = classification_metrics(splits["dev"].labels, _full_probs(clf, feats["dev"], num_classes))
            grid.append({"k": k, "C": c, "dev": dev, "fit_seconds": round(time.time() - t0, 2)})
            score = -math.inf if dev[s.select_metric] is None else dev[s.select_metric]
            if best is None or score > best[0]:
                best = (score, k, c, clf, feats["test"], dev)
    _, k, c, clf, test_x, dev = best
    test = classification_metrics(splits["test"].labels, _full_probs(clf, test_x, num_classes))
    settings_d = {**asdict(s), "ks": list(s.ks), "cs": list(s.cs)}
    return {"baseline": "kmer", "label": LABELS["kmer"], "settings": settings_d, "grid": grid,
            "selected": {"k": k, "C": c}, "best_dev": dev, "test": test, "test_evaluations": 1,
            "seconds": round(time.time() - started, 2)}


def _full_probs(clf, x, num_classes: int) -> np.ndarray:
    """(n, num_classes) probabilities, with zeros for classes the classifier never saw."""
    probs = np.zeros((x.shape[0], num_classes))
    probs[:, clf.classes_] = clf.predict_proba(x)
    return probs


TRAINERS = {"cnn": train_cnn, "kmer": train_kmer}


def run_baseline(name: str, splits: dict[str, LabelledSplit], num_classes: int, seed: int = 0) -> dict:
    """Train baseline ``name`` (one of :data:`BASELINES`) on ``splits`` with ``seed``."""
    if name not in TRAINERS:
        raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
    return TRAINERS[name](splits, num_classes, seed)


def baseline_on_task(name: str, task, seed: int = 0, command: str | None = None, **settings) -> dict:
    """Baseline ``name`` on a :class:`~mergedna.data.tasks.Task`, split exactly as
    :func:`mergedna.finetune.finetune` splits it with the same ``settings`` (``dev_fraction``,
    ``split_seed``, ``train_on_dev``). Adds task notes, seed and run metadata to the result."""
    from .finetune import FinetuneSettings, prepare_splits
    from .provenance import run_metadata

    fs = FinetuneSettings(**{k: v for k, v in settings.items() if k in ("dev_fraction", "split_seed",
                                                                        "train_on_dev")})
    splits, notes = prepare_splits(task, fs)
    result = run_baseline(name, splits, task.num_classes, seed)
    return {**result, "task": {"name": task.name, "metric": task.metric, "label_names": list(task.label_names),
                               "sizes": {k: len(v) for k, v in splits.items()}, **notes},
            "seed": seed, **run_metadata(command)}
