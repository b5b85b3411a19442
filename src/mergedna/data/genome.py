"""Reference genomes for pretraining: a cached FASTA encoding and a stateless window sampler.

:class:`Genome` reads one or many FASTA files (plain, gzip or bgzip, many records each),
encodes them once with :func:`mergedna.vocab.encode_bytes` into a single ``uint8`` array
and caches it as a raw memory-mapped file plus a JSON sidecar, keyed by the absolute
paths, sizes and mtimes of the inputs. The cache is written to temporary files and
``os.replace``-d into place, sidecar last, so a crash never leaves a half cache.

:class:`GenomeSampler` draws windows uniformly over every start at which a window fits
inside one record's training part (records weigh by usable length), redraws N-heavy ones,
applies reverse-complement augmentation, and is stateless: ``batch(step, batch_size)`` is
a pure function of ``(seed, rank, step, batch_size)``, so resuming needs no sampler state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mergedna.seqio import (SequenceFileError, atomic_path, iter_fasta_pieces, parse_region, record_name,
                            remove_stale_temps, union_intervals)
from mergedna.vocab import N, reverse_complement

CACHE_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One FASTA record: ``name`` (header up to the first blank), source ``file``,
    ``offset`` of its first base in :attr:`Genome.ids` and ``length`` in bases."""

    name: str
    file: str
    offset: int
    length: int


def default_cache_dir() -> Path:
    """``$MERGEDNA_CACHE`` if set, else ``~/.cache/mergedna/genomes``."""
    return Path(os.environ.get("MERGEDNA_CACHE") or Path.home() / ".cache" / "mergedna" / "genomes")


def _n_runs(ids: np.ndarray) -> np.ndarray:
    """Maximal runs of ``N`` in ``ids`` as a (2, R) int64 array of half-open [start, end)."""
    is_n = ids == N
    if not is_n.any():
        return np.zeros((2, 0), dtype=np.int64)
    flips = np.flatnonzero(is_n[1:] != is_n[:-1]) + 1  # state changes alternate start/end
    bounds = np.concatenate([[0] if is_n[0] else [], flips, [ids.size] if is_n[-1] else []])
    return bounds.astype(np.int64).reshape(-1, 2).T


def _parse_fasta(path: str, out, offset: int, progress=None) -> tuple[list[Record], list[np.ndarray]]:
    """Stream one FASTA file into ``out`` as ids; return its records and its N runs.

    N runs are ``(2, R)`` arrays of global half-open ``[start, end)`` intervals.
    """
    records: list[Record] = []
    runs: list[np.ndarray] = []
    current, name, start, length = -1, None, offset, 0
    for index, header, _, ids in iter_fasta_pieces(path, progress):
        if index != current:  # a new record begins
            if name is not None:
                records.append(Record(name, path, start, length))
            current, name, start, length = index, record_name(header), start + length, 0
        out.write(memoryview(ids))
        runs.append(_n_runs(ids) + start + length)
        length += ids.size
    records.append(Record(name, path, start, length))
    return records, runs


def _check_unique(records: list[Record]) -> None:
    seen: dict[str, Record] = {}
    for r in records:
        if r.name in seen:
            first = seen[r.name]
            where = f"both in {r.file}" if first.file == r.file else f"in {first.file} and in {r.file}"
            raise SequenceFileError(f"record name {r.name!r} appears twice ({where}); records are addressed by "
                                    "name (--val, regions), so names must be unique", file=r.file, record=r.name)
        seen[r.name] = r


class Genome:
    """Encoded reference sequence: ``ids`` (T,) ``uint8`` memmap of every record back to back.

    Build with :meth:`from_fasta`. ``records[i]`` spans ``ids[offset : offset + length]``;
    ``count_n`` counts ``N`` in many intervals at once from the cached list of N runs.
    """

    def __init__(self, ids: np.ndarray, records: list[Record], n_runs: np.ndarray, cache_path: Path | None = None,
                 cache_hit: bool = False, build_seconds: float = 0.0):
        self.ids, self.records, self.n_runs, self.cache_path = ids, records, n_runs, cache_path
        self.cache_hit, self.build_seconds = cache_hit, build_seconds
        self._run_start, run_end = n_runs[0], n_runs[1]  # (R,) each, sorted and disjoint
        self._run_end = np.concatenate([[0], run_end])  # (R+1,): end of the run before each index
        self._n_before = np.concatenate([[0], np.cumsum(run_end - self._run_start)])  # (R+1,)

    @classmethod
    def from_fasta(cls, paths: str | os.PathLike | Sequence[str | os.PathLike],
                   cache_dir: str | os.PathLike | None = None, progress: bool = False) -> Genome:
        """Load FASTA file(s), parsing only when no valid cache exists for this exact file set.

        Raises :class:`~mergedna.seqio.SequenceFileError` for an unreadable, empty or non-FASTA
        file or a record name used twice, naming file, record, position and line where known
        (:func:`~mergedna.seqio.iter_fasta_pieces`). ``progress`` shows a bar while caching.
        """
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        files = [os.path.abspath(p) for p in paths]
        for f in files:
            if not os.path.isfile(f):
                raise SequenceFileError("no such file" if not os.path.exists(f) else "not a file", file=f)
        stats = [os.stat(f) for f in files]
        key = json.dumps([CACHE_VERSION, [[f, s.st_size, s.st_mtime_ns] for f, s in zip(files, stats)]])
        path_hash = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:12]
        state_hash = hashlib.sha256(key.encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(files[0]).name.split(".")[0])[:40]
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        base = cache_dir / f"{stem}-{path_hash}-{state_hash}"
        try:
            meta = json.loads(base.with_suffix(".json").read_text())
            if meta["key"] == key and os.path.getsize(base.with_suffix(".u8")) == meta["total"]:
                return cls._open_cache(base, meta, cache_hit=True)
        except (OSError, ValueError, KeyError):
            pass  # no cache, or a damaged one: rebuild
        return cls._build(files, key, base, progress)

    @staticmethod
    def _open_cache(base: Path, meta: dict, cache_hit: bool, build_seconds: float = 0.0) -> Genome:
        return _reopen(base.with_suffix(".u8"), meta, np.load(base.with_suffix(".nruns.npy")), cache_hit, build_seconds)

    @classmethod
    def _build(cls, files: list[str], key: str, base: Path, progress: bool = False) -> Genome:
        t0 = time.perf_counter()
        base.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(base.parent)  # left by a killed build
        bar = tqdm(total=sum(os.path.getsize(f) for f in files), unit="B", unit_scale=True, desc="caching genome",
                   delay=2, disable=not progress)
        # the sidecar is opened first so that it is renamed into place last: it commits the cache
        with atomic_path(base.with_suffix(".json")) as meta_tmp, atomic_path(base.with_suffix(".nruns.npy")) as runs_tmp, \
                atomic_path(base.with_suffix(".u8")) as ids_tmp:
            records, runs = [], []
            with open(ids_tmp, "wb") as out:
                for f in files:
                    parsed = _parse_fasta(f, out, out.tell(), bar.update)
                    records, runs = records + parsed[0], runs + parsed[1]
                total = out.tell()
            bar.close()
            _check_unique(records)
            if total == 0:
                raise SequenceFileError(f"no sequence in {', '.join(files)}")
            with open(runs_tmp, "wb") as fh:
                np.save(fh, np.concatenate(runs, axis=1) if runs else np.zeros((2, 0), np.int64))
            meta = {"key": key, "total": total, "records": [asdict(r) for r in records]}
            meta_tmp.write_text(json.dumps(meta))
        prefix = base.name.rsplit("-", 1)[0] + "-"
        for stale in base.parent.glob(prefix + "*"):  # older caches of the same files
            if not stale.name.startswith(base.name):
                stale.unlink(missing_ok=True)
        return cls._open_cache(base, meta, cache_hit=False, build_seconds=time.perf_counter() - t0)

    def __reduce__(self):
        # Pickle (spawned workers, mp.spawn) by reopening the cache file, not by copying the bases.
        if not isinstance(self.ids, np.memmap) or self.cache_path is None:
            return object.__reduce__(self)
        meta = {"total": len(self), "records": [asdict(r) for r in self.records]}
        return _reopen, (self.cache_path, meta, self.n_runs, self.cache_hit, self.build_seconds)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def record_index(self, record: int | str) -> int:
        """Index of a record given by index or by (unique) name."""
        if isinstance(record, (int, np.integer)):
            return int(record)
        hits = [i for i, r in enumerate(self.records) if r.name == record]
        if len(hits) != 1:
            raise KeyError(f"no record named {record!r}; the records are {_names(self.records)}")
        return hits[0]

    def fetch(self, record: int | str, start: int = 0, end: int | None = None) -> np.ndarray:
        """Ids of ``record[start:end]`` (0-based, half-open), a read-only view (end-start,)."""
        rec = self.records[self.record_index(record)]
        end = rec.length if end is None else end
        if not 0 <= start <= end <= rec.length:
            raise IndexError(f"[{start}, {end}) outside record {rec.name!r} of length {rec.length}")
        return self.ids[rec.offset + start : rec.offset + end]

    def count_n(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Number of ``N`` in each global interval ``ids[starts[i]:ends[i]]``; O(log runs) each."""
        x = np.stack([np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)])  # (2, M)
        k = np.searchsorted(self._run_start, x, side="left")  # (2, M) runs starting before x
        n_upto = self._n_before[k] - (self._run_end[k] - np.minimum(x, self._run_end[k]))  # N in ids[:x]
        return n_upto[1] - n_upto[0]


def _reopen(path: Path, meta: dict, n_runs: np.ndarray, cache_hit: bool, build_seconds: float) -> Genome:
    ids = np.memmap(path, dtype=np.uint8, mode="r", shape=(meta["total"],))
    return Genome(ids, [Record(**r) for r in meta["records"]], n_runs, Path(path), cache_hit, build_seconds)


def _names(records, limit: int = 20) -> str:
    names = [r.name for r in records]
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def holdout_intervals(genome: Genome, val: float | str | Sequence[str]) -> list[tuple[int, int, int]]:
    """Held-out validation intervals ``(record_index, start, end)``: 0-based, half-open, sorted, merged.

    ``val`` (``--val``) is a fraction (the last ``round(val * length)`` bases of every record), or
    one or more specs: a record name (the whole record) or a region ``name:start-end`` in the
    samtools convention (1-based, inclusive). A spec that is exactly a record name is a name,
    even if it contains ``:``.
    """
    held: dict[int, list[tuple[int, int]]] = {}
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        if not 0 <= val < 1:
            raise ValueError(f"--val: a fraction must be in [0, 1), got {val}")
        for i, r in enumerate(genome.records):
            held[i] = [(r.length - int(round(val * r.length)), r.length)]
    else:
        by_name = {r.name: i for i, r in enumerate(genome.records)}
        for spec in [val] if isinstance(val, str) else val:
            if spec in by_name:
                held.setdefault(by_name[spec], []).append((0, genome.records[by_name[spec]].length))
                continue
            name, start, end = parse_region(spec)
            if name not in by_name:
                raise ValueError(f"--val {spec!r}: no record named {name!r}; the records are {_names(genome.records)}")
            i = by_name[name]
            if start is None:
                start, end = 0, genome.records[i].length
            if end > genome.records[i].length:
                raise ValueError(f"--val {spec!r}: ends after record {name!r} ({genome.records[i].length} bases)")
            held.setdefault(i, []).append((start, end))
    return [(i, a, b) for i in sorted(held) for a, b in union_intervals(held[i])]


class _Starts:
    """Uniform draws over every global start whose window fits inside one of the intervals."""

    def __init__(self, genome: Genome, intervals: list[tuple[int, int, int]], window: int):
        lo = np.array([genome.records[i].offset + a for i, a, _ in intervals], dtype=np.int64)  # (S,)
        n = np.array([max(0, b - a - window + 1) for _, a, b in intervals], dtype=np.int64)  # (S,) valid starts
        self.lo, self.cum = lo[n > 0], np.concatenate([[0], np.cumsum(n[n > 0])])  # cum: (S'+1,)
        self.total = int(self.cum[-1])

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.integers(0, self.total, size=n)  # (n,) index into all valid starts
        seg = np.searchsorted(self.cum, u, side="right") - 1
        return self.lo[seg] + (u - self.cum[seg])


class GenomeSampler:
    """Stateless sampler of ``window``-base training (or validation) windows from a :class:`Genome`.

    Windows lie inside one record and inside the ``split`` part of it: the held-out part
    (see :func:`holdout_intervals`; default the last 1% of every record) for ``'val'``,
    the rest for ``'train'``, so no training window ever holds a held-out base. Starts are
    uniform over all valid starts; windows whose ``N`` fraction exceeds ``max_n_fraction``
    are redrawn; each window is reverse-complemented with probability ``rc_prob``.
    Every stream is a pure function of ``(seed, rank, step)``; ranks get independent streams.
    """

    MAX_ROUNDS = 64

    def __init__(self, genome: Genome, window: int = 4096, max_n_fraction: float = 0.1, rc_prob: float = 0.5,
                 split: str = "train", val: float | str | Sequence[str] = 0.01, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.genome, self.window, self.split = genome, window, split
        self.max_n_fraction, self.rc_prob = max_n_fraction, rc_prob
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.val_intervals = holdout_intervals(genome, val)
        held: dict[int, list[int]] = {}
        for i, a, b in self.val_intervals:
            held.setdefault(i, []).extend((a, b))
        self.train_intervals = []  # the gaps between held-out intervals, per record
        for i, r in enumerate(genome.records):
            edges = [0, *held.get(i, []), r.length]
            self.train_intervals += [(i, a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]
        self._starts = {"train": _Starts(genome, self.train_intervals, window),
                        "val": _Starts(genome, self.val_intervals, window)}
        if self._starts[split].total == 0:
            longest = max(r.length for r in genome.records)
            raise ValueError(f"no {window}-base window fits inside the {split} part of the genome (--val {val!r}; "
                             f"{len(genome.records)} records, the longest {longest} bases): hold out whole records "
                             "or regions with --val NAME or --val NAME:START-END, or use a smaller --window")

    def _rng(self, stream: int, rank: int, step: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, stream, rank, step])))

    def _accepted(self, rng: np.random.Generator, split: str, n: int) -> np.ndarray:
        """``n`` window starts (n,) passing the N filter, in draw order."""
        starts, got, limit = self._starts[split], [], self.max_n_fraction * self.window
        for _ in range(self.MAX_ROUNDS):
            cand = starts.draw(rng, max(2 * n, 64))
            got.append(cand[self.genome.count_n(cand, cand + self.window) <= limit])
            if sum(g.size for g in got) >= n:
                return np.concatenate(got)[:n]
        files = ", ".join(dict.fromkeys(r.file for r in self.genome.records))
        raise ValueError(f"{files}: nearly every {split} window of {self.window} bases has more N than "
                         f"--max-n-fraction {self.max_n_fraction}; is the sequence mostly N?")

    def draw(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Global starts (B,) int64 and reverse-complement flags (B,) bool of batch ``step``."""
        rng = self._rng(0 if self.split == "train" else 1, self.rank, step)
        starts = self._accepted(rng, self.split, batch_size)
        return starts, rng.random(batch_size) < self.rc_prob

    def _windows(self, starts: np.ndarray, rc: np.ndarray) -> torch.Tensor:
        out = np.empty((starts.size, self.window), dtype=np.uint8)  # (B, window)
        for b, s in enumerate(starts):
            out[b] = self.genome.ids[s : s + self.window]
        if rc.any():
            out[rc] = reverse_complement(out[rc])
        return torch.from_numpy(out).long()

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Batch ``step`` as ids (B, window) int64; bit-identical for equal (seed, rank, step, B)."""
        return self._windows(*self.draw(step, batch_size))

    def val_starts(self, n_windows: int) -> np.ndarray:
        """This rank's share (``[rank::world_size]``) of a fixed list of ``n_windows`` held-out
        window starts, which depends on ``seed`` only."""
        if self._starts["val"].total == 0:
            raise ValueError(f"no {self.window}-base window fits inside the held-out part of the genome (--val)")
        return self._accepted(self._rng(2, 0, 0), "val", n_windows)[self.rank :: self.world_size]

    def val_batches(self, n_windows: int, batch_size: int) -> list[torch.Tensor]:
        """This rank's validation windows (no RC augmentation) as batches (<= batch_size, window)."""
        starts = self.val_starts(n_windows)
        chunks = [starts[i : i + batch_size] for i in range(0, starts.size, batch_size)]
        return [self._windows(c, np.zeros(c.size, dtype=bool)) for c in chunks]
