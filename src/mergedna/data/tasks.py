"""Labelled benchmark tasks for fine-tuning and evaluation (docs/method.md §8).

Every loader returns a :class:`Task`: named :class:`LabelledSplit` s (``train``/``dev``/``test``,
those present), the label names with their integer ids, and the metric the benchmark publishes.

Layouts read
------------
* **GUE** (DNABERT-2), :func:`load_gue_task`: ``<task>/{train,dev,test}.csv``, header
  ``sequence,label``. Metric MCC. Tasks shipped without ``train.csv`` load with the splits present
  and list the others in :attr:`Task.missing_splits`.
* **Genomic Benchmarks**, :func:`load_genomic_benchmark`: the folder layout
  ``<task>/{train,test}/<class_name>/*.txt`` (one sequence per file, the label is the folder name),
  or the CSV/TSV exports ``<task>/{train,test}.{csv,tsv}`` with a ``seq``/``sequence`` and a
  ``label`` column. Metric top-1 accuracy.
* **Nucleotide Transformer benchmark**, :func:`load_nt_task`: ``<task>/{train,test}.{csv,tsv}`` with
  ``sequence``, ``label`` and optionally ``name`` columns, or the original ``{train,test}.fna``
  (headers ``>name|label``). Metric by task name: ``promoter*`` F1, ``splice*`` accuracy, else MCC.
* **Generic**: :func:`load_csv_task` (delimited text, columns named by the caller, delimiter sniffed)
  and :func:`load_fasta_task` (FASTA with the label in the header, rule in :func:`read_labelled_fasta`).

Split files are found by stem: ``train``; ``dev`` (also ``val``, ``valid``, ``validation``);
``test``; any of them may be gzipped (``.gz``). Column names match case-insensitively.

Label ids
---------
The distinct labels of the ``train`` split (of all splits together when there is no train split)
are sorted, numerically when every label is an integer and as strings otherwise, and numbered
0..C-1: GUE's ``0/1`` keep their values, UCI splice ``ei/ie/n`` become ``0/1/2``. A dev or test
label that train lacks is an error. Pass ``label_names`` to fix the order yourself.

Errors
------
A malformed row (missing column, wrong number of fields, empty sequence or label, a header without
a label) raises :class:`~mergedna.seqio.SequenceFileError`; a bad base raises :class:`~mergedna.vocab.InvalidSequenceError`.
Both messages name the file and the 1-based line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mergedna.data.task_formats import (
    FASTA_SUFFIXES,
    SPLITS,
    TABLE_SUFFIXES,
    LabelledRow,
    find_split_files,
    format_suffix,
    read_class_folders,
    read_delimited,
    read_labelled_fasta,
)
from mergedna.seqio import SequenceFileError, open_text, read_errors
from mergedna.vocab import encode

_INT = re.compile(r"^[+-]?\d+$")


@dataclass(repr=False)
class LabelledSplit:
    """Encoded sequences with integer labels, stored flat.

    Sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]`` (uint8 ids of :mod:`mergedna.vocab`).
    ``labels`` (n,) int64; ``names`` the original record ids (``"<file>:<line>"`` when the source
    has none); ``files``/``file_index``/``lines`` say where each row came from. ``parent`` is set
    only after chunking (:func:`~mergedna.data.task_batching.apply_length_policy`): the row of the
    original split each chunk was cut from.

    It is a map-style dataset: ``split[i]`` is ``(ids, label, i, parent_i)``.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    names: list[str]
    files: list[str]
    file_index: np.ndarray
    lines: np.ndarray
    parent: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int, int]:
        parent = int(self.parent[i]) if self.parent is not None else int(i)
        return self.sequence(i), int(self.labels[i]), int(i), parent

    def __repr__(self) -> str:
        lengths = self.lengths
        span = f"{lengths.min()}-{lengths.max()} bp" if len(self) else "empty"
        return f"LabelledSplit(n={len(self)}, {span}, label counts {np.bincount(self.labels).tolist()})"

    @property
    def lengths(self) -> np.ndarray:
        """(n,) int64 sequence lengths."""
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        """Ids of sequence ``i`` (a view into ``tokens``)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def where(self, i: int) -> str:
        """``"<file>, line <n>"`` for row ``i``, for error messages."""
        return f"{self.files[self.file_index[i]]}, line {self.lines[i]}"

    def take(self, rows, starts=None, lengths=None, parent=None) -> LabelledSplit:
        """A new split whose k-th sequence is bases ``[starts[k], starts[k] + lengths[k])`` of row
        ``rows[k]`` (whole rows when ``starts``/``lengths`` are None). Labels, names and origins
        follow their row. ``parent`` (row indices into this split) sets the new split's parent,
        composed with this split's own parent when it has one.
        """
        rows = np.asarray(rows, dtype=np.int64)
        starts = np.zeros(len(rows), np.int64) if starts is None else np.asarray(starts, np.int64)
        lengths = self.lengths[rows] if lengths is None else np.asarray(lengths, np.int64)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # (total,) source position of every output base: row start + slice start + rank within slice
        shift = np.repeat(self.offsets[rows] + starts - offsets[:-1], lengths)
        tokens = self.tokens[shift + np.arange(offsets[-1])]
        if parent is not None and self.parent is not None:
            parent = self.parent[np.asarray(parent)]
        elif parent is None and self.parent is not None:
            parent = self.parent[rows]
        return LabelledSplit(
            tokens=tokens,
            offsets=offsets,
            labels=self.labels[rows],
            names=[self.names[r] for r in rows],
            files=self.files,
            file_index=self.file_index[rows],
            lines=self.lines[rows],
            parent=None if parent is None else np.asarray(parent, np.int64),
        )

    def subset(self, rows) -> LabelledSplit:
        """Whole rows ``rows``, in that order."""
        return self.take(rows)


@dataclass(repr=False)
class Task:
    """A labelled benchmark task.

    ``splits`` maps ``train``/``dev``/``test`` (those present; ``all`` for a single unsplit file)
    to :class:`LabelledSplit`. ``label_names[k]`` is the original label of class id ``k``.
    ``metric`` is ``"mcc"``, ``"accuracy"`` or ``"f1"``. ``missing_splits`` lists the splits the
    layout expects that were not found (e.g. GUE tasks shipped without ``train.csv``).
    """

    name: str
    splits: dict[str, LabelledSplit]
    label_names: list[str]
    metric: str
    missing_splits: tuple[str, ...] = ()
    root: str | None = None
    label_to_id: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.label_to_id = {name: i for i, name in enumerate(self.label_names)}

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __getitem__(self, split: str) -> LabelledSplit:
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no {split!r} split (it has {sorted(self.splits)})")
        return self.splits[split]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        missing = f", missing {list(self.missing_splits)}" if self.missing_splits else ""
        return f"Task({self.name!r}, {parts}, classes {self.label_names}, metric {self.metric}{missing})"


def _label_order(records_by_split: Mapping[str, list[LabelledRow]]) -> list[str]:
    ref = records_by_split.get("train")
    pool = ref if ref is not None else [r for recs in records_by_split.values() for r in recs]
    labels = {r[1] for r in pool}
    if all(_INT.match(x) for x in labels):
        return sorted(labels, key=lambda x: (int(x), x))
    return sorted(labels)


def _build_split(records: list[LabelledRow], label_to_id: dict[str, int], split: str, source: str) -> LabelledSplit:
    arrays, labels, names, files, file_index, lines = [], [], [], {}, [], []
    for seq, label, name, file, line in records:
        if label not in label_to_id:
            raise SequenceFileError(
                f"label {label!r} of split {split!r} is not among the {source} labels {list(label_to_id)}",
                file=file, line=line)
        where = f"line {line}" if name is None else f"{name}, line {line}"
        arrays.append(encode(seq, record=where, file=file) if isinstance(seq, str) else seq)
        labels.append(label_to_id[label])
        names.append(name if name is not None else f"{Path(file).name}:{line}")
        file_index.append(files.setdefault(file, len(files)))
        lines.append(line)
    offsets = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    return LabelledSplit(
        tokens=np.concatenate(arrays) if arrays else np.zeros(0, np.uint8),
        offsets=offsets,
        labels=np.asarray(labels, np.int64),
        names=names,
        files=list(files),
        file_index=np.asarray(file_index, np.int32),
        lines=np.asarray(lines, np.int64),
    )


def make_task(
    name: str,
    records_by_split: Mapping[str, list[LabelledRow]],
    metric: str,
    label_names: list[str] | None = None,
    expected: tuple[str, ...] = SPLITS,
    root=None,
) -> Task:
    """Build a :class:`Task` from records per split, numbering labels as the module docstring says."""
    if not records_by_split:
        raise SequenceFileError(f"task {name!r}: no split files found", file=root)
    for split, records in records_by_split.items():
        if not records:
            raise SequenceFileError(f"split {split!r} has no rows", file=root)
    if label_names is not None:
        order, source = [str(x) for x in label_names], "given"
    else:
        order = _label_order(records_by_split)
        source = "training" if "train" in records_by_split else "task's"
    mapping = {label: i for i, label in enumerate(order)}
    splits = {s: _build_split(recs, mapping, s, source) for s, recs in records_by_split.items()}
    missing = tuple(s for s in expected if s not in splits)
    return Task(name, splits, order, metric, missing, None if root is None else str(root))


def load_gue_task(path, name: str | None = None, label_names: list[str] | None = None) -> Task:
    """A GUE task folder ``<task>/{train,dev,test}.csv`` (header ``sequence,label``); metric MCC.
    ``name`` defaults to the last two path parts (``tf/0``)."""
    root = Path(path)
    files = find_split_files(root, (".csv",))
    records = {s: read_delimited(f, "sequence", "label") for s, f in files.items()}
    return make_task(name or f"{root.parent.name}/{root.name}", records, "mcc", label_names, SPLITS, root)


def load_genomic_benchmark(path, name: str | None = None, label_names: list[str] | None = None) -> Task:
    """A Genomic Benchmarks task: class folders ``<task>/{train,test}/<class>/*.txt`` when present,
    else CSV/TSV exports ``<task>/{train,test}.{csv,tsv}``; metric accuracy."""
    root = Path(path)
    folders = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if folders:
        records = {s: read_class_folders(d) for s, d in folders.items()}
    else:
        records = {s: read_delimited(f) for s, f in find_split_files(root).items()}
    return make_task(name or root.name, records, "accuracy", label_names, ("train", "test"), root)


def nt_metric(task_name: str) -> str:
    """The NT benchmark's published metric: F1 for promoters, accuracy for splice sites, else MCC."""
    lowered = task_name.lower()
    return "f1" if lowered.startswith("promoter") else "accuracy" if lowered.startswith("splice") else "mcc"


def load_nt_task(
    path, name: str | None = None, label_names: list[str] | None = None, metric: str | None = None
) -> Task:
    """A Nucleotide Transformer benchmark task: ``<task>/{train,test}.{csv,tsv}`` (``sequence``,
    ``label``, optional ``name``) or ``{train,test}.fna`` (``>name|label``). Metric from
    :func:`nt_metric` unless given."""
    root = Path(path)
    files = find_split_files(root, TABLE_SUFFIXES + FASTA_SUFFIXES)
    records = {
        s: read_labelled_fasta(f) if format_suffix(f) in FASTA_SUFFIXES else read_delimited(f) for s, f in files.items()
    }
    name = name or root.name
    return make_task(name, records, metric or nt_metric(name), label_names, ("train", "test"), root)


def _sources(source, suffixes) -> tuple[dict[str, Path], Path | None, str]:
    """``(files per split, root, default name)`` for a file (split ``all``), a folder or a mapping."""
    if isinstance(source, Mapping):
        files = {str(k): Path(v) for k, v in source.items()}
        first = next(iter(files.values()), Path("task"))
        return files, first.parent, first.parent.name
    source = Path(source)
    if source.is_dir():
        return find_split_files(source, suffixes), source, source.name
    stem = Path(source.stem).stem if source.suffix == ".gz" else source.stem
    return {"all": source}, source.parent, stem


def load_csv_task(
    source,
    sequence_column: str | int | None = None,
    label_column: str | int | None = None,
    name_column: str | int | None = None,
    delimiter: str | None = None,
    header: bool = True,
    name: str | None = None,
    metric: str = "mcc",
    label_names: list[str] | None = None,
) -> Task:
    """Delimited text with labels. ``source`` is one file (one split named ``all``: use
    :func:`make_split`), a folder of split files, or ``{split: path}``. Columns and delimiter as
    in :func:`read_delimited`."""
    files, root, default = _sources(source, TABLE_SUFFIXES)
    records = {
        s: read_delimited(f, sequence_column, label_column, name_column, delimiter, header) for s, f in files.items()
    }
    return make_task(name or default, records, metric, label_names, SPLITS, root)


def load_fasta_task(
    source, label_key: str = "label", name: str | None = None, metric: str = "mcc", label_names=None
) -> Task:
    """FASTA with labels in the headers (rule in :func:`read_labelled_fasta`). ``source`` as in
    :func:`load_csv_task`."""
    files, root, default = _sources(source, FASTA_SUFFIXES)
    records = {s: read_labelled_fasta(f, label_key) for s, f in files.items()}
    return make_task(name or default, records, metric, label_names, SPLITS, root)


LAYOUTS = {
    "gue": load_gue_task,
    "genomic_benchmarks": load_genomic_benchmark,
    "nt": load_nt_task,
    "csv": load_csv_task,
    "fasta": load_fasta_task,
}


def detect_layout(path) -> str:
    """The layout of a task path: a file is ``fasta`` when it starts with ``>``, else ``csv``; a
    folder with ``train/`` class folders is ``genomic_benchmarks``, one with ``.fna`` split files
    ``nt``, one with split ``.csv`` files ``gue``, other split tables ``csv``, split FASTA ``fasta``."""
    path = Path(path)
    if path.is_file():
        with open_text(path) as fh, read_errors(path):
            first = next((line for line in fh if line.strip()), "")
        return "fasta" if first.startswith(">") else "csv"
    if not path.is_dir():
        raise FileNotFoundError(f"task {path} not found")
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "genomic_benchmarks"
    tables = find_split_files(path, TABLE_SUFFIXES)
    fasta = find_split_files(path, FASTA_SUFFIXES)
    if any(format_suffix(f) == ".fna" for f in fasta.values()):
        return "nt"
    if tables:
        return "gue" if all(format_suffix(f) == ".csv" for f in tables.values()) else "csv"
    if fasta:
        return "fasta"
    raise SequenceFileError("no task files: expected train/dev/test CSV, TSV or FASTA files, or class folders "
                            "train/<class>/*.txt", file=path)


def load_task(path, layout: str = "auto", **kwargs) -> Task:
    """Load ``path`` with the loader for ``layout`` (a key of :data:`LAYOUTS`, or ``auto``:
    :func:`detect_layout`). ``kwargs`` go to the loader (e.g. ``sequence_column`` for csv)."""
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown task layout {layout!r}; expected auto or one of {sorted(LAYOUTS)}")
    if kwargs and layout != "csv":
        raise ValueError(f"--sequence-column/--label-column apply to CSV/TSV tasks (--layout csv), not {layout}")
    return LAYOUTS[layout](path, **kwargs)


def _apportion(n: int, fractions: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * fractions`` (largest remainder, ties to the
    earlier split)."""
    exact = n * fractions
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def make_split(task_or_split, fractions=(0.8, 0.1, 0.1), seed: int = 0, stratify: bool = True):
    """A fixed random split of data that has none.

    ``fractions`` are (train, dev, test) or (train, test), non-negative, summing to 1; a zero
    fraction leaves that split out. With ``stratify`` each class is split on its own, so every
    split holds each class within one row of its exact share. Rows are drawn with
    ``numpy.random.default_rng(seed)`` and kept in their original order inside each split, so the
    result depends only on the data, ``fractions`` and ``seed``.

    Given a :class:`Task` with exactly one split, returns a new :class:`Task` with the new splits;
    given a :class:`LabelledSplit`, returns ``{split name: LabelledSplit}``.
    """
    names = {3: SPLITS, 2: ("train", "test")}.get(len(fractions))
    frac = np.asarray(fractions, dtype=np.float64)
    if names is None or (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise ValueError(f"fractions must be 2 or 3 non-negative numbers summing to 1, got {fractions}")
    task = task_or_split if isinstance(task_or_split, Task) else None
    if task is not None and len(task.splits) != 1:
        raise ValueError(f"task {task.name!r} already has splits {list(task.splits)}; make_split needs exactly one")
    split = next(iter(task.splits.values())) if task is not None else task_or_split
    if stratify:
        groups = [np.flatnonzero(split.labels == c) for c in np.unique(split.labels)]
    else:
        groups = [np.arange(len(split))]
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for group in groups:
        group = rng.permutation(group)
        bounds = np.concatenate([[0], np.cumsum(_apportion(len(group), frac))])
        for k in range(len(names)):
            parts[k].append(group[bounds[k] : bounds[k + 1]])
    splits = {n: split.subset(np.sort(np.concatenate(p))) for n, p, f in zip(names, parts, frac) if f > 0}
    if task is None:
        return splits
    return dataclasses.replace(task, splits=splits, missing_splits=tuple(s for s in SPLITS if s not in splits))
