"""Streaming FASTA reading, one record at a time (for embed and segment; whole genomes for
pretraining go through the cached, chunked reader of :mod:`mergedna.data.genome`)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator

import numpy as np

from ..vocab import encode


def open_text(path: str | Path):
    """Open a text file, gzip or bgzip (sniffed from the magic bytes, not the suffix)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path, "rt")


def iter_fasta(path: str | Path, fh=None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, ids)`` per record; name = header up to the first blank. A record with no
    sequence, text before the first header, or a bad character is an error naming the file
    and record. ``fh`` reads from an already open text handle instead of opening ``path``."""
    path = Path(path)
    if fh is None:
        with open_text(path) as handle:
            yield from iter_fasta(path, handle)
        return
    name, parts = None, []

    def record():
        if not parts:
            raise ValueError(f"{path}: record {name!r} has no sequence")
        return name, encode("".join(parts), record=name, file=str(path))

    for line in fh:
        line = line.strip()
        if line.startswith(">"):
            if name is not None:
                yield record()
            name, parts = (line[1:].split() or [""])[0], []
        elif line:
            if name is None:
                raise ValueError(f"{path}: not FASTA: sequence before the first '>' header")
            parts.append(line)
    if name is not None:
        yield record()
