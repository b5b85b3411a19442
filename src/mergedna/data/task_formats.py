"""Readers for labelled sequence files, one record per labelled sequence.

Every reader returns a list of :class:`LabelledRow` ``(sequence, label text, name or None, file,
1-based line)``; :mod:`mergedna.data.tasks` encodes them and numbers the labels. Formats:
delimited text with a header (:func:`read_delimited`), FASTA with the label in the header
(:func:`read_labelled_fasta`) and Genomic Benchmarks class folders (:func:`read_class_folders`).
Any file may be gzip or bgzip (sniffed from its content, :mod:`mergedna.seqio`) and may start with a
byte-order mark. A malformed row raises :class:`~mergedna.seqio.SequenceFileError` naming the file
and the line.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mergedna.seqio import SequenceFileError, iter_fasta_records, open_text

SPLITS = ("train", "dev", "test")
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "val": "dev", "valid": "dev", "validation": "dev", "test": "test"}
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
FASTA_SUFFIXES = (".fa", ".fna", ".fasta")
SEQUENCE_COLUMNS = ("sequence", "seq", "sequences", "dna")
LABEL_COLUMNS = ("label", "labels", "class", "target", "y")
NAME_COLUMNS = ("name", "id", "seq_id", "sequence_id", "record")


class LabelledRow(NamedTuple):
    """One labelled sequence as read: its text (or ids, from FASTA), label text, name (None when
    the source has none), file and 1-based line."""

    sequence: str | np.ndarray
    label: str
    name: str | None
    file: str
    line: int


def format_suffix(path: Path) -> str:
    """The format suffix, looking through ``.gz``."""
    return Path(path.stem).suffix.lower() if path.suffix == ".gz" else path.suffix.lower()


def _sniff_delimiter(first_line: str, path: Path) -> str:
    """The most frequent of tab, comma, semicolon, pipe in the first line; by extension if none."""
    counts = {d: first_line.count(d) for d in ("\t", ",", ";", "|")}
    best = max(counts, key=counts.get)
    if counts[best]:
        return best
    return "\t" if format_suffix(path) in (".tsv", ".tab") else ","


def _column(header: list[str], wanted, candidates, what: str, path: Path, required: bool = True):
    if isinstance(wanted, int):
        if not 0 <= wanted < len(header):
            raise SequenceFileError(f"{what} column index {wanted} out of range for {len(header)} columns", file=path, line=1)
        return wanted
    lowered = [h.strip().lower() for h in header]
    names = (wanted,) if wanted is not None else candidates
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    if required or wanted is not None:
        raise SequenceFileError(f"no {what} column (looked for {list(names)}); header is {header}", file=path, line=1)
    return None


def read_delimited(
    path,
    sequence_column: str | int | None = None,
    label_column: str | int | None = None,
    name_column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
) -> list[LabelledRow]:
    """Rows of a CSV/TSV file as records ``(sequence, label, name, file, line)``.

    Columns are given by name (header required) or 0-based index; ``None`` looks for the usual
    names (``sequence``/``seq``..., ``label``/``class``..., optional ``name``/``id``...). The
    delimiter, unless given, is sniffed from the first line. Blank lines are skipped; a row with
    the wrong number of fields, an empty sequence or an empty label is a :class:`~mergedna.seqio.SequenceFileError`.
    """
    path = Path(path)
    with open_text(path, newline="") as fh:
        first = fh.readline()
        if not first.strip():
            raise SequenceFileError("empty file or blank first line", file=path, line=1)
        delimiter = delimiter or _sniff_delimiter(first, path)
        reader = csv.reader(itertools.chain([first], fh), delimiter=delimiter)
        if header:
            head = next(reader)
            width = len(head)
        else:
            if not all(isinstance(c, int) for c in (sequence_column, label_column)):
                raise SequenceFileError("header=False needs integer sequence_column and label_column", file=path)
            head, width = [str(i) for i in range(len(next(csv.reader([first], delimiter=delimiter))))], None
        seq_i = _column(head, sequence_column, SEQUENCE_COLUMNS, "sequence", path)
        label_i = _column(head, label_column, LABEL_COLUMNS, "label", path)
        name_i = _column(head, name_column, NAME_COLUMNS, "name", path, required=False)
        records = []
        for row in reader:
            line = reader.line_num
            if not any(f.strip() for f in row):
                continue
            if width is None:
                width = len(row)
            if len(row) != width:
                raise SequenceFileError(f"expected {width} fields, found {len(row)}", file=path, line=line)
            seq, label = row[seq_i].strip(), row[label_i].strip()
            if not seq:
                raise SequenceFileError("empty sequence", file=path, line=line)
            if not label:
                raise SequenceFileError("empty label", file=path, line=line)
            records.append(LabelledRow(seq, label, row[name_i].strip() if name_i is not None else None, str(path), line))
    return records


def _parse_header(header: str, label_key: str, path: Path, line: int) -> tuple[str, str]:
    tokens = header.split()
    if not tokens:
        raise SequenceFileError("empty FASTA header", file=path, line=line)
    prefix = label_key + "="
    for token in tokens[1:]:
        if token.startswith(prefix) and len(token) > len(prefix):
            return tokens[0], token[len(prefix) :]
    name, bar, label = tokens[0].rpartition("|")
    if bar and name and label:
        return name, label
    raise SequenceFileError(f"no label in header {header!r} (expected '>id {prefix}X' or '>id|X')", file=path, line=line)


def read_labelled_fasta(path, label_key: str = "label") -> list[LabelledRow]:
    """Records of a FASTA file whose headers carry the label.

    Rule, first match wins: a whitespace-separated ``label=X`` token after the id
    (``>seq7 label=ei``; the key is ``label_key``), giving name ``seq7``; else an id ending in
    ``|X`` (``>chr1:100-400|1``, the NT benchmark's ``.fna``), giving name ``chr1:100-400``.
    A header matching neither, or a record without sequence, is a :class:`~mergedna.seqio.SequenceFileError` naming
    the header's line. Sequence lines are joined; blank lines are skipped.
    """
    return [LabelledRow(ids, *reversed(_parse_header(header, label_key, path, line)), str(path), line)
            for header, line, ids in iter_fasta_records(path)]


def _natural_key(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def read_class_folders(split_dir) -> list[LabelledRow]:
    """Records of a Genomic Benchmarks split folder ``<split>/<class_name>/*.txt``: one sequence
    per file (whitespace removed), label = class folder name, name = file stem. Classes in sorted
    order, files in natural (numeric-aware) order. The line reported is 1."""
    split_dir = Path(split_dir)
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise SequenceFileError("no class folders", file=split_dir)
    records = []
    for class_dir in classes:
        for file in sorted(class_dir.glob("*.txt"), key=_natural_key):
            seq = "".join(file.read_text(encoding="utf-8").split())
            if not seq:
                raise SequenceFileError("empty sequence", file=file, line=1)
            records.append(LabelledRow(seq, class_dir.name, file.stem, str(file), 1))
    return records


def find_split_files(root, suffixes=TABLE_SUFFIXES) -> dict[str, Path]:
    """``{split: file}`` for files in ``root`` named ``<split>.<suffix>[.gz]`` (split aliases in the
    module docstring), in train/dev/test order. Two files for one split is an error."""
    root = Path(root)
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        stem = Path(path.stem).stem if path.suffix == ".gz" else path.stem
        split = _SPLIT_ALIASES.get(stem.lower())
        if path.is_file() and split and format_suffix(path) in suffixes:
            if split in found:
                raise SequenceFileError(f"two files for split {split!r}: {found[split].name} and {path.name}", file=root)
            found[split] = path
    return {s: found[s] for s in SPLITS if s in found}


