"""Batches of labelled sequences for fine-tuning and evaluation.

Pipeline: :func:`apply_length_policy` fits a :class:`~mergedna.data.tasks.LabelledSplit` to the
model's maximum length, :class:`LengthBucketSampler` groups rows of similar length, and
:func:`collate_labelled` pads them. :func:`make_dataloader` does all three. When the ``chunk``
policy cut sequences into pieces, :func:`average_chunk_logits` folds per-chunk logits back to one
row per original sequence.

Long-sequence policies (a sequence is long when it has more than ``max_length`` bases):

* ``"error"`` (default): raise :class:`SequenceTooLongError` naming the first long row's file,
  line and length, and how many rows are long.
* ``"truncate"``: keep ``max_length`` bases, from the centre (default: benchmark windows are
  centred on the site, peak or TSS they label) or from the head (``truncate="head"``).
* ``"chunk"``: cut into windows of ``max_length`` bases overlapping by ``overlap`` (default
  ``max_length // 4``); the last window is aligned to the sequence end, so it may overlap more.
  Each chunk keeps its sequence's label, and ``split.parent`` maps it back to its sequence.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from mergedna.data.tasks import LabelledSplit
from mergedna.seqio import chunk_layout, pad_batch

LENGTH_POLICIES = ("error", "truncate", "chunk")


class SequenceTooLongError(ValueError):
    """A sequence is longer than the model's maximum length under the ``"error"`` policy."""


def apply_length_policy(
    split: LabelledSplit,
    max_length: int,
    policy: str = "error",
    truncate: str = "centre",
    overlap: int | None = None,
) -> LabelledSplit:
    """``split`` with no sequence longer than ``max_length``, by ``policy`` (module docstring).

    ``"error"`` and ``"truncate"`` keep one row per sequence (``"truncate"`` returns a new split,
    ``"error"`` the same one); ``"chunk"`` returns one row per chunk, with ``parent`` set (also when
    nothing needed cutting), rows of one sequence consecutive and in order.
    """
    if policy not in LENGTH_POLICIES:
        raise ValueError(f"unknown length policy {policy!r}; expected one of {LENGTH_POLICIES}")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    lengths = split.lengths
    long = np.flatnonzero(lengths > max_length)
    if policy == "error":
        if long.size:
            i = int(long[0])
            raise SequenceTooLongError(
                f"{split.where(i)}: sequence {split.names[i]!r} has {lengths[i]} bases, more than max_length "
                f"{max_length} ({long.size} of {len(split)} sequences are longer, the longest {lengths.max()}); "
                "pass --length-policy truncate or --length-policy chunk (length_policy='truncate'/'chunk')"
            )
        return split
    if policy == "truncate":
        if truncate not in ("centre", "head"):
            raise ValueError(f"truncate must be 'centre' or 'head', got {truncate!r}")
        excess = np.maximum(lengths - max_length, 0)
        starts = excess // 2 if truncate == "centre" else np.zeros_like(excess)
        return split.take(np.arange(len(split)), starts, np.minimum(lengths, max_length))
    overlap = max_length // 4 if overlap is None else overlap
    rows, starts = chunk_layout(lengths, max_length, overlap)  # (M,) each: sequence and start of every chunk
    return split.take(rows, starts, np.minimum(lengths[rows], max_length), parent=rows)


def average_chunk_logits(logits: torch.Tensor, parent, num_parents: int | None = None) -> torch.Tensor:
    """Mean of the logits of each sequence's chunks.

    ``logits`` (M, C) for M chunks in any order; ``parent`` (M,) the ``parent`` of each chunk
    (the ``"parent"`` entry of :func:`collate_labelled`). Returns (P, C) with
    ``P = num_parents or parent.max() + 1``; row p is the mean over the chunks of sequence p.
    A sequence with no chunk (e.g. lost to ``drop_last``) is an error.
    """
    parent = torch.as_tensor(parent, dtype=torch.long, device=logits.device)
    num_parents = int(parent.max()) + 1 if num_parents is None else num_parents
    sums = torch.zeros(num_parents, logits.shape[-1], dtype=logits.dtype, device=logits.device)
    sums.index_add_(0, parent, logits)
    counts = torch.bincount(parent, minlength=num_parents)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"{int((counts == 0).sum())} sequences have no chunk (first: {missing})")
    return sums / counts[:, None].to(logits.dtype)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of row indices that group sequences of similar length.

    Training (``shuffle=True``): each epoch, rows are permuted, cut into buckets of
    ``bucket_size`` rows (default 100 batches, rounded up to whole batches), sorted by length
    inside each bucket, batched, and the batch order shuffled. The draw depends only on
    ``(seed, epoch)``: call :meth:`set_epoch` before each epoch (``start`` skips that epoch's first
    batches, to resume mid-epoch without loading them). Evaluation (``shuffle=False``):
    all rows sorted by length (stable), batched in that order.

    Every row appears exactly once per epoch, except that ``drop_last`` drops the one short batch
    and, with ``num_replicas > 1``, the batch list is padded by repeating its first batches (or,
    with ``drop_last``, cut) to a multiple of ``num_replicas`` and replica ``rank`` takes every
    ``num_replicas``-th batch.
    """

    def __init__(
        self,
        lengths,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size: int | None = None,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < num_replicas, got {batch_size}, {rank}, {num_replicas}"
            )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        bucket = bucket_size or 100 * batch_size
        self.bucket_size = -(-bucket // batch_size) * batch_size  # whole batches per bucket
        self.drop_last, self.num_replicas, self.rank = drop_last, num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self.epoch))
            perm = rng.permutation(n)
            order = np.concatenate(
                [
                    bucket[np.argsort(self.lengths[bucket], kind="stable")]
                    for bucket in np.split(perm, np.arange(self.bucket_size, n, self.bucket_size))
                ]
            )
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = np.split(order, np.arange(bs, n, bs)) if n else []
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % self.num_replicas]
            else:
                batches += [batches[i % len(batches)] for i in range(-len(batches) % self.num_replicas)]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self):
        for batch in self._batches()[self.start:]:
            yield batch.tolist()

    def __len__(self) -> int:
        n, bs = len(self.lengths), self.batch_size
        total = n // bs if self.drop_last else -(-n // bs)
        if self.num_replicas == 1:
            return total
        return total // self.num_replicas if self.drop_last else -(-total // self.num_replicas)


def collate_labelled(batch, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of ``LabelledSplit`` items ``(ids, label, index, parent)`` into tensors.

    Returns ``input_ids`` (B, N) long, padded at the end with ``PAD`` (5); ``attention_mask``
    (B, N) bool, True on real bases; ``labels`` (B,) long; ``index`` (B,) the rows in the split;
    ``parent`` (B,) the original sequences (equal to ``index`` unless the split was chunked).
    N is the longest sequence, rounded up to ``pad_to_multiple_of`` when given.
    """
    ids, mask = pad_batch([item[0] for item in batch], pad_to_multiple_of)  # (B, N) each
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([item[1] for item in batch], dtype=torch.long),
        "index": torch.tensor([item[2] for item in batch], dtype=torch.long),
        "parent": torch.tensor([item[3] for item in batch], dtype=torch.long),
    }


def make_dataloader(
    split: LabelledSplit,
    batch_size: int,
    max_length: int,
    policy: str = "error",
    truncate: str = "centre",
    overlap: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    bucket_size: int | None = None,
    drop_last: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
    pad_to_multiple_of: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over ``split`` fitted to ``max_length`` by ``policy``, batched by
    :class:`LengthBucketSampler` and padded by :func:`collate_labelled`.

    ``loader.dataset`` is the fitted split (with ``parent`` under ``"chunk"``); call
    ``loader.batch_sampler.set_epoch(epoch)`` before each training epoch.
    """
    fitted = apply_length_policy(split, max_length, policy, truncate, overlap)
    sampler = LengthBucketSampler(
        fitted.lengths, batch_size, shuffle, seed, bucket_size, drop_last, num_replicas, rank
    )
    return DataLoader(
        fitted,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate_labelled, pad_to_multiple_of=pad_to_multiple_of),
        num_workers=num_workers,
    )
