"""Sequence embeddings from a MergeDNA encoder (the Local + Latent Encoder, φ + ψ).

* **pooled** (default): one vector per sequence, the mean over bases of their tokens' vectors
  (:func:`~mergedna.heads.pool_bases`, the size-weighted token mean the classifier pools too);
* **per base**: each base gets its token's vector, gathered through ``assign`` (the un-merge
  map, :func:`~mergedna.merging.unmerge`), so bases of one token share a vector.

Long sequences are cut into windows of ``chunk_length`` bases (default: the model's
``max_length``) overlapping by ``chunk_overlap`` (default a quarter), the last window aligned to
the sequence end, exactly as the ``chunk`` length policy of :mod:`mergedna.data.task_batching`
cuts them. Pooled: the chunks' vectors averaged with weights = chunk lengths; per base: each
position averages the chunks that cover it.

Reverse-complement averaging (``rc_average``) embeds every chunk a second time as its reverse
complement and averages the two: pooled vectors directly, per-base vectors after flipping the
reverse strand's back to forward positions. For a sequence that needs no chunking this is
exactly the mean of embedding the sequence and embedding its reverse complement.

Files (:func:`embed_file`): FASTA or CSV/TSV in (``.gz`` too), read as a stream in blocks;
``.npy`` (pooled ``(n, D)``; per base ``(total bases, D)``, sequences one after another, with a
``<out stem>.ids.tsv`` sidecar giving each sequence's ``index, id, length, offset``) or Parquet
(columns ``id, length, embedding`` pooled; ``id, position, embedding`` per base, one row group
per block). A first pass over the input validates every sequence and counts them, so a bad
character fails before any model work; the outputs are written to temporary files renamed into
place at the end, so an error never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.task_formats import NAME_COLUMNS, SEQUENCE_COLUMNS, _column, _sniff_delimiter
from .heads import pool_bases
from .merging import unmerge
from .model import MergeDNAModel
from .precision import autocast
from .seqio import SequenceFileError, atomic_path, chunk_starts, iter_fasta, open_text, pad_batch, read_errors
from .vocab import encode, reverse_complement


def load_encoder(directory: str | os.PathLike, **config_overrides) -> MergeDNAModel:
    """The encoder (φ + ψ) of any mergedna checkpoint directory, in eval mode
    (:meth:`MergeDNAModel.from_pretrained`, which takes the encoder out of any checkpoint)."""
    return MergeDNAModel.from_pretrained(directory, **config_overrides).eval()


def as_encoder(model) -> MergeDNAModel:
    """``model`` itself if it is a :class:`MergeDNAModel`, its ``.mergedna`` for the heads and the
    pretraining model, or the encoder loaded from a checkpoint path."""
    if isinstance(model, (str, os.PathLike)):
        return load_encoder(model)
    return model if isinstance(model, MergeDNAModel) else model.mergedna


@torch.no_grad()
def _run(encoder: MergeDNAModel, pieces: list[np.ndarray], per_base: bool, precision: str,
         merge_ratio) -> list[np.ndarray]:
    """Embed id arrays ``pieces`` (each at most the batch) in one forward pass."""
    ids, mask = pad_batch(pieces)  # (B, N) each
    with autocast(precision):
        out = encoder(ids, mask, merge_ratio)
    z = out.last_hidden_state.float()
    if per_base:
        x = unmerge(z, out.assign).numpy()  # (B, N, D): each base its token's vector
        return [x[b, : len(p)] for b, p in enumerate(pieces)]
    return list(pool_bases(z, out.token_sizes, out.token_mask).numpy())  # B × (D,)


def iter_embeddings(model, records: Iterable[tuple[str, np.ndarray]], per_base: bool = False,
                    rc_average: bool = False, chunk_length: int | None = None, chunk_overlap: int | None = None,
                    batch_size: int = 32, precision: str = "fp32", merge_ratio: float | None = None,
                    block_bases: int | None = None, progress: Callable[[int], None] | None = None
                    ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, embedding)`` for ``(name, ids)`` records, in input order; pooled ``(D,)`` or
    per-base ``(length, D)`` float32 (module docstring for chunks and ``rc_average``).

    Records are taken in blocks of about ``block_bases`` bases (default: 64 batches of full chunks
    pooled; per base, as many bases as keep the block's float32 vectors near 256 MB, and always
    at least one whole record, so a per-base record needs length × D × 4 bytes); inside a block
    the chunks are sorted by length so batches pad little. The model's outputs do not depend on
    batch composition, so results do not depend on ``batch_size``. ``progress(n)`` is called after
    every batch with the bases it covered (so a long record shows progress inside it).
    """
    encoder = as_encoder(model)
    encoder.eval()
    chunk_length = chunk_length or encoder.config.max_length
    overlap = chunk_length // 4 if chunk_overlap is None else chunk_overlap
    if not 0 <= overlap < chunk_length:
        raise ValueError(f"chunk_overlap must be in [0, chunk_length), got {overlap} for {chunk_length}")
    dim = encoder.config.hidden_size
    block_bases = block_bases or ((256 << 20) // (4 * dim) if per_base else 64 * batch_size * chunk_length)
    records = iter(records)
    while True:
        block, bases = [], 0
        for name, ids in records:
            block.append((name, ids))
            bases += len(ids)
            if bases >= block_bases:
                break
        if not block:
            return
        # (record, start, reverse?) per piece; pieces sorted by length, longest first
        strands = (False, True) if rc_average else (False,)
        pieces = [(r, int(s), rc) for r, (_, ids) in enumerate(block)
                  for s in chunk_starts(len(ids), chunk_length, overlap) for rc in strands]
        pieces.sort(key=lambda p: -min(chunk_length, len(block[p[0]][1])))
        counts = np.bincount([r for r, _, _ in pieces], minlength=len(block))
        share = [len(ids) / c for (_, ids), c in zip(block, counts)]
        dtype = np.float32 if per_base else np.float64  # per base: memory; pooled: a few sums
        acc = [np.zeros((len(ids), dim) if per_base else dim, dtype) for _, ids in block]
        sums = [np.zeros((len(ids), 1) if per_base else 1, dtype) for _, ids in block]
        for k in range(0, len(pieces), batch_size):
            batch = pieces[k : k + batch_size]
            arrays = []
            for r, s, rc in batch:
                piece = block[r][1][s : s + chunk_length]
                arrays.append(reverse_complement(piece) if rc else piece)
            for (r, s, rc), vec in zip(batch, _run(encoder, arrays, per_base, precision, merge_ratio)):
                n = len(vec) if per_base else min(chunk_length, len(block[r][1]))
                if per_base:  # the reverse strand's row j is forward position n - 1 - j
                    acc[r][s : s + n] += vec[::-1] if rc else vec
                    sums[r][s : s + n] += 1
                else:  # weight = bases in the chunk
                    acc[r] += n * vec
                    sums[r] += n
            if progress is not None:  # each chunk stands for an equal share of its record's bases
                progress(sum(share[r] for r, _, _ in batch))
        for (name, _), total, weight in zip(block, acc, sums):
            yield name, (total / weight).astype(np.float32)


def embed_sequences(model, sequences: list[str], names: list[str] | None = None, per_base: bool = False,
                    **kwargs) -> np.ndarray | list[np.ndarray]:
    """Embed DNA strings. ``model``: a :class:`MergeDNAModel`, a model holding one (``.mergedna``)
    or a checkpoint path. Pooled: ``(n, D)`` float32; per base: a list of ``(length_i, D)`` arrays.
    Other options as in :func:`iter_embeddings`. A bad character raises
    :class:`~mergedna.vocab.InvalidSequenceError` naming the record."""
    names = names or [f"sequence {i + 1}" for i in range(len(sequences))]
    records = ((name, encode(seq, record=name)) for name, seq in zip(names, sequences))
    out = [vec for _, vec in iter_embeddings(model, records, per_base=per_base, **kwargs)]
    if per_base:
        return out
    return np.stack(out) if out else np.zeros((0, as_encoder(model).config.hidden_size), np.float32)


def read_sequences(path: str | os.PathLike, sequence_column: str | int | None = None,
                   id_column: str | int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Stream ``(id, ids)`` records from FASTA (id = header up to the first blank) or CSV/TSV
    (sequence column by name or index, else the usual names; id column likewise, else
    ``<file>:<line>``), told apart by content (a FASTA file starts with ``>``), gzip or not.
    Every error (bad character, unreadable or empty file) names file, record and position."""
    path = Path(path)
    with open_text(path, newline="") as fh, read_errors(path):
        first = fh.readline()
        while first and not first.strip():
            first = fh.readline()
        if first.startswith(">"):
            fh.close()
            yield from iter_fasta(path)
            return
        if not first:
            raise SequenceFileError("empty input: no FASTA record and no table header", file=path)
        reader = csv.reader(itertools.chain([first], fh), delimiter=_sniff_delimiter(first, path))
        head = next(reader)
        seq_i = _column(head, sequence_column, SEQUENCE_COLUMNS, "sequence", path)
        id_i = _column(head, id_column, NAME_COLUMNS, "id", path, required=False)
        rows = 0
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            name = row[id_i].strip() if id_i is not None else f"{path.name}:{reader.line_num}"
            if len(row) <= seq_i or not row[seq_i].strip():
                raise SequenceFileError("no sequence", file=path, line=reader.line_num)
            rows += 1
            yield name, encode(row[seq_i].strip(), record=f"{name} (line {reader.line_num})", file=str(path))
        if not rows:
            raise SequenceFileError("a header but no rows", file=path)


def embed_file(model, input_path: str | os.PathLike, out_path: str | os.PathLike, per_base: bool = False,
               sequence_column=None, id_column=None, progress: bool = True, **kwargs) -> dict:
    """Embed every sequence of ``input_path`` into ``out_path`` (``.npy`` or ``.parquet``; layout in
    the module docstring). Returns ``{"sequences", "bases", "dim", "out", "ids"}``."""
    out_path = Path(out_path)
    kind = out_path.suffix.lower()
    if kind not in (".npy", ".parquet"):
        raise ValueError(f"{out_path}: output must end in .npy or .parquet")
    encoder = as_encoder(model)
    lengths = [len(ids) for _, ids in read_sequences(input_path, sequence_column, id_column)]  # validate + count
    n, total, dim = len(lengths), int(sum(lengths)), encoder.config.hidden_size
    ids_path = out_path.with_suffix(".ids.tsv") if kind == ".npy" else None
    bar = tqdm(total=total, unit="bp", unit_scale=True, desc="embed", disable=not progress, delay=2)
    stream = iter_embeddings(encoder, read_sequences(input_path, sequence_column, id_column), per_base,
                             progress=bar.update, **kwargs)
    with atomic_path(out_path) as tmp, contextlib.ExitStack() as stack:
        if kind == ".npy":
            side_tmp = stack.enter_context(atomic_path(ids_path))  # renamed before the array
            shape = (total if per_base else n, dim)
            _reserve(tmp, 128 + 4 * shape[0] * shape[1], out_path)  # ENOSPC now, not SIGBUS in the memmap later
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            offset = 0
            with open(side_tmp, "w") as side:
                side.write("index\tid\tlength\toffset\n")
                for i, (name, vec) in enumerate(stream):
                    if per_base:
                        array[offset : offset + len(vec)] = vec
                    else:
                        array[i] = vec
                    side.write(f"{i}\t{name}\t{lengths[i]}\t{offset if per_base else i}\n")
                    offset += lengths[i]
            array.flush()
            del array
        else:
            _write_parquet(tmp, stream, lengths, dim, per_base)
    bar.close()
    return {"sequences": n, "bases": total, "dim": dim, "out": str(out_path),
            "ids": str(ids_path) if ids_path else None}


def _reserve(path: Path, size: int, target: Path) -> None:
    """Allocate ``size`` bytes for ``path`` on disk (where the filesystem can), so that a full disk
    fails here with ENOSPC (naming ``target``) instead of killing a memory-mapped write with SIGBUS."""
    with open(path, "wb") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, size)
        except OSError as err:
            if err.errno not in (95, 22):  # EOPNOTSUPP/EINVAL: the filesystem cannot preallocate
                raise OSError(err.errno, f"{err.strerror} (needs {size / 1e6:,.0f} MB)", str(target)) from None


def _write_parquet(path: Path, stream, lengths: list[int], dim: int, per_base: bool, rows_per_group: int = 4096):
    """Write ``(id, vector)`` items of ``stream`` as Parquet row groups of about ``rows_per_group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("position" if per_base else "length", pa.int64()),
                        ("embedding", pa.list_(pa.float32(), dim))])
    buffer: list[tuple[str, int, np.ndarray]] = []  # (id, sequence length, vector(s))
    with pq.ParquetWriter(str(path), schema) as writer:

        def flush():
            if per_base:  # one row per base
                ids = [name for name, length, _ in buffer for _ in range(length)]
                second = np.concatenate([np.arange(length) for _, length, _ in buffer])
            else:
                ids, second = [name for name, _, _ in buffer], np.array([length for _, length, _ in buffer])
            flat = np.concatenate([vec.reshape(-1) for _, _, vec in buffer])
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
            writer.write_table(pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(second, pa.int64()),
                                                     vectors], schema=schema))
            buffer.clear()

        rows = 0
        for i, (name, vec) in enumerate(stream):
            buffer.append((name, lengths[i], vec))
            rows += lengths[i] if per_base else 1
            if rows >= rows_per_group:
                flush()
                rows = 0
        if buffer:
            flush()
