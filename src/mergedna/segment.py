"""Seeing the tokens: the Local Encoder's learned segmentation of DNA, and how token length
follows annotated regions (the paper's claim that information-dense regions, such as exons,
get shorter tokens).

Only the Local Encoder (φ, the tokenizer) runs, with the model's ``merge_ratio`` unless
overridden. A record (or a ``record:start-end`` region, 1-based inclusive as in samtools) is cut
into **non-overlapping** windows of the model's ``max_length`` bases, the last one shorter, and
each window is tokenized on its own: a window edge is always a token edge, and no token spans
two windows. A token is a maximal run of bases with the same ``assign`` value (spans are
contiguous, docs/method.md §4). Coordinates are 0-based half-open in the record.

Annotations: BED (0-based half-open; the region type is column 4 unless another column is
named) or GFF3 (column 3, the feature type; 1-based inclusive, converted). An annotation line
applies to a record whose name equals its sequence name, or, for records named like a samtools
region ``chrom:start-end`` (as in a sliced FASTA), to that slice of ``chrom``, shifted by
``start - 1``. Names match with or without a ``chr`` prefix. Each token is assigned to the
region types that contain its **midpoint base** (``(start + end - 1) // 2``), so a token
straddling a region edge counts once, on the side of its middle; nested types (GFF genes and
exons) each count it. Tokens whose midpoint is in no region are ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tqdm.auto import tqdm

from .model import MergeDNAModel, prepare_inputs
from .precision import autocast
from .seqio import (SequenceFileError, atomic_path, iter_fasta, open_text, pad_batch, parse_region, read_errors, union_intervals,
                    write_json_atomic)
from .vocab import decode

OTHER = "other"


@dataclass
class Segmentation:
    """Tokens of one processed span: ``starts``/``ends`` (T,) record coordinates; ``ids`` the
    processed bases, which begin at record coordinate ``offset``."""

    record: str
    offset: int
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts


@torch.no_grad()
def segment_ids(encoder: MergeDNAModel, ids: np.ndarray, window: int | None = None,
                merge_ratio: float | None = None, batch_size: int = 8,
                progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Token ``(starts, ends)`` of id array ``ids`` (coordinates in ``ids``), tokenized in
    non-overlapping windows of ``window`` bases (default the model's ``max_length``).
    ``progress(n)`` is called with the bases of every batch done."""
    window = window or encoder.config.max_length
    bounds = [(s, min(s + window, len(ids))) for s in range(0, len(ids), window)]
    starts = []
    for k in range(0, len(bounds), batch_size):
        part = bounds[k : k + batch_size]
        batch, mask = pad_batch([ids[s:e] for s, e in part])  # (B, N) each
        base_mask = prepare_inputs(batch, mask)
        assign = encoder.local_encoder(batch, base_mask, merge_ratio).assign.numpy()  # (B, N)
        for b, (s, e) in enumerate(part):
            a = assign[b, : e - s]
            starts.append(s + np.flatnonzero(np.r_[True, a[1:] != a[:-1]]))  # a token starts where assign changes
        if progress is not None:
            progress(sum(e - s for s, e in part))
    starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    return starts, np.r_[starts[1:], len(ids)].astype(np.int64)


def format_tokens(seg: Segmentation, limit: int | None = None, width: int = 80) -> list[str]:
    """The bases with ``|`` between tokens, as lines of ``width`` characters. With ``limit``,
    only the tokens that cover the first ``limit`` bases (the last one whole)."""
    text = decode(seg.ids)
    keep = len(seg.starts) if limit is None else int(np.searchsorted(seg.starts - seg.offset, limit, "left"))
    joined = "|".join(text[s - seg.offset : e - seg.offset] for s, e in zip(seg.starts[:keep], seg.ends[:keep]))
    return [joined[i : i + width] for i in range(0, len(joined), width)]


def read_annotation(path: str | Path, fmt: str, type_column: int = 4) -> list[tuple[str, int, int, str]]:
    """``(chrom, start, end, type)`` intervals, 0-based half-open, from a BED (type from 1-based
    column ``type_column``; ``region`` when the line has fewer columns) or GFF3 (type = column 3)."""
    path = Path(path)
    out = []
    with open_text(path) as fh, read_errors(path):
        for number, line in enumerate(fh, 1):
            if line.startswith("##FASTA"):
                break
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\n").split("\t")
            try:
                if fmt == "bed":
                    kind = f[type_column - 1] if len(f) >= type_column else "region"
                    out.append((f[0], int(f[1]), int(f[2]), kind))
                else:
                    out.append((f[0], int(f[3]) - 1, int(f[4]), f[2]))
            except (IndexError, ValueError):
                raise SequenceFileError(f"not a {fmt.upper()} line: {line.strip()[:80]!r}", file=path,
                                        line=number) from None
            if out[-1][2] < out[-1][1]:
                raise SequenceFileError("end before start", file=path, line=number)
    return out


def _norm(name: str) -> str:
    return name[3:] if name.lower().startswith("chr") else name


def record_regions(annotation, record: str, length: int) -> list[tuple[int, int, str]]:
    """The annotation's intervals on ``record`` in record coordinates, clipped to ``[0, length)``."""
    sliced, slice_start, _ = parse_region(record)  # a record named like a region: a slice of `sliced`
    out = []
    for chrom, start, end, kind in annotation:
        if _norm(chrom) == _norm(record):
            shift = 0
        elif slice_start is not None and _norm(chrom) == _norm(sliced):
            shift = slice_start
        else:
            continue
        s, e = max(start - shift, 0), min(end - shift, length)
        if s < e:
            out.append((s, e, kind))
    return out


def _union(intervals) -> tuple[np.ndarray, np.ndarray]:
    """Sorted disjoint (starts, ends) arrays covering ``intervals``."""
    arr = np.asarray(union_intervals(intervals), dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def token_region_types(seg: Segmentation, regions) -> list[list[str]]:
    """Per token, the region types containing its midpoint base (empty list: ``other``)."""
    mid = (seg.starts + seg.ends - 1) // 2
    labels = [[] for _ in mid]
    for kind in sorted({r[2] for r in regions}):
        starts, ends = _union([(s, e) for s, e, k in regions if k == kind])
        i = np.searchsorted(starts, mid, "right") - 1
        inside = (i >= 0) & (mid < ends[np.maximum(i, 0)])
        for t in np.flatnonzero(inside):
            labels[t].append(kind)
    return labels


def region_stats(segs: list[Segmentation], regions_per_seg: list[list]) -> dict:
    """Per region type (and ``other``): regions, bases covered, tokens, mean and median token length."""
    lengths: dict[str, list] = {}
    counts: dict[str, list] = {}
    for seg, regions in zip(segs, regions_per_seg):
        lo, hi = seg.offset, seg.offset + len(seg.ids)
        inside = [(max(s, lo), min(e, hi), k) for s, e, k in regions if s < hi and e > lo]
        for kind in {k for _, _, k in inside}:
            starts, ends = _union([(s, e) for s, e, k in inside if k == kind])
            c = counts.setdefault(kind, [0, 0])
            c[0] += sum(1 for *_, k in inside if k == kind)
            c[1] += int((ends - starts).sum())
        starts, ends = _union([(s, e) for s, e, _ in inside])
        other = counts.setdefault(OTHER, [None, 0])
        other[1] += (hi - lo) - int((ends - starts).sum())
        for length, kinds in zip(seg.lengths, token_region_types(seg, inside)):
            for kind in kinds or [OTHER]:
                lengths.setdefault(kind, []).append(int(length))
    stats = {}
    for kind in sorted(counts, key=lambda k: (k == OTHER, k)):
        arr = np.asarray(lengths.get(kind, []), dtype=np.float64)
        stats[kind] = {"regions": counts[kind][0], "bases": counts[kind][1], "tokens": int(arr.size),
                       "mean_token_length": float(arr.mean()) if arr.size else None,
                       "median_token_length": float(np.median(arr)) if arr.size else None}
    return stats


def plot_segmentation(segs: list[Segmentation], regions_per_seg, path: str | Path, max_panels: int = 6) -> None:
    """PNG: token length along each processed span (steps, one per token, plus a binned mean),
    annotated regions shaded by type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = segs[:max_panels]
    kinds = sorted({k for regions in regions_per_seg for *_, k in regions})
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 2.6 * len(shown)), squeeze=False)
    for ax, seg, regions in zip(axes[:, 0], shown, regions_per_seg):
        ax.stairs(seg.lengths, np.r_[seg.starts, seg.ends[-1:]], color="0.4", linewidth=0.6, label="token length")
        bin_w = max(64, len(seg.ids) // 100)
        edges = np.arange(seg.offset, seg.offset + len(seg.ids) + bin_w, bin_w)
        mids = (seg.starts + seg.ends - 1) // 2
        per_bin = np.histogram(mids, edges)[0]
        bases = np.diff(np.minimum(edges, seg.offset + len(seg.ids)))
        with np.errstate(divide="ignore", invalid="ignore"):
            ax.stairs(np.where(per_bin > 0, bases / per_bin, np.nan), edges, color="tab:blue", linewidth=1.5,
                      label=f"mean over {bin_w} bp")
        seen = set()
        for s, e, kind in regions:
            ax.axvspan(s, e, color=colours[kind], alpha=0.25, label=None if kind in seen else kind)
            seen.add(kind)
        ax.set_xlim(seg.offset, seg.offset + len(seg.ids))
        ax.set_title(f"{seg.record}: {len(seg.ids)} bases, {len(seg.starts)} tokens, "
                     f"mean {len(seg.ids) / max(1, len(seg.starts)):.2f} bases/token", fontsize=9)
        ax.set_ylabel("bases per token")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("position in record (0-based)")
    if len(segs) > max_panels:
        fig.suptitle(f"first {max_panels} of {len(segs)} records", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def segment_fasta(encoder: MergeDNAModel, fasta, regions: list[str] | None = None, merge_ratio=None,
                  batch_size: int = 8, progress: bool = False, precision: str = "fp32") -> list[Segmentation]:
    """Segment every record of ``fasta``, or only ``regions`` (``rec`` or ``rec:start-end``, 1-based
    inclusive), in file order. A region text that is itself a record's name (``20:59001-61000`` in
    a sliced FASTA) means that whole record, as in samtools. ``progress`` shows a bar in bases.
    ``precision`` (:mod:`mergedna.precision`): fp32 by default, because bf16 grouping scores can tie
    differently and move a boundary (docs/method.md §6); bf16 is faster on a GPU."""
    out = []
    bar = tqdm(unit="bp", unit_scale=True, desc="segment", disable=not progress, delay=2)
    device = next(encoder.parameters()).device
    for name, s, ids in iter_regions(fasta, regions):
        with autocast(precision, device):
            starts, ends = segment_ids(encoder, ids, merge_ratio=merge_ratio, batch_size=batch_size,
                                       progress=bar.update)
        out.append(Segmentation(name, s, ids, starts + s, ends + s))
    bar.close()
    return out


def iter_regions(fasta, regions: list[str] | None = None):
    """Yield ``(record, start, ids)`` for every record of ``fasta``, or only ``regions`` (as in
    :func:`segment_fasta`), in file order; ``start`` is 0-based in the record."""
    parsed = {text: parse_region(text) for text in regions or []}
    done, names = set(), []
    for name, ids in iter_fasta(fasta):
        names.append(name)
        spans = [(0, len(ids), name)] if not regions else []
        for text, (rec, s, e) in parsed.items():
            if text not in done and (text == name or rec == name):
                spans.append((0, len(ids), text) if text == name or s is None else (s, e, text))
                done.add(text)
        for s, e, text in spans:
            if e > len(ids):
                raise ValueError(f"--region {text!r} ends after record {name!r} ({len(ids)} bases)")
            yield name, s, ids[s:e]
    missing = [text for text in parsed if text not in done]
    if missing:
        more = f" ... ({len(names)} in all)" if len(names) > 20 else ""
        raise ValueError(f"--region {', '.join(missing)}: no such record in {fasta}; the records are "
                         f"{', '.join(names[:20])}{more}")


def write_tokens(path: str | Path, segs: list[Segmentation], regions_per_seg=None) -> None:
    """``record, start, end, length`` per token as TSV (atomically), plus ``region_type`` (the types
    holding the token's midpoint, or ``other``) when ``regions_per_seg`` is given."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("record\tstart\tend\tlength" + ("\tregion_type\n" if regions_per_seg is not None else "\n"))
        for k, seg in enumerate(segs):
            kinds = token_region_types(seg, regions_per_seg[k]) if regions_per_seg is not None else None
            for t, (s, e) in enumerate(zip(seg.starts, seg.ends)):
                extra = f"\t{','.join(kinds[t]) or OTHER}" if kinds is not None else ""
                fh.write(f"{seg.record}\t{s}\t{e}\t{e - s}{extra}\n")


def segment_to_dir(encoder: MergeDNAModel, fasta, out: str | Path, regions: list[str] | None = None,
                   annotation: str | Path | None = None, annotation_format: str = "bed", bed_type_column: int = 4,
                   batch_size: int = 8, progress: bool = False, precision: str = "fp32") -> dict:
    """Segment ``fasta`` (:func:`segment_fasta`) and write ``out/tokens.tsv``, ``out/token_lengths.png`` and,
    with an ``annotation`` file (BED or GFF3), ``out/region_stats.json``. Returns ``segmentations``,
    ``regions`` (per segmentation, record coordinates), ``stats`` (:func:`region_stats`, None without
    annotation), ``written`` (file names in ``out``) and the encoder's ``config``."""
    segs = segment_fasta(encoder, fasta, regions, batch_size=batch_size, progress=progress, precision=precision)
    intervals = read_annotation(annotation, annotation_format, bed_type_column) if annotation else None
    per_seg = [record_regions(intervals, s.record, s.offset + len(s.ids)) if intervals else [] for s in segs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tokens(out / "tokens.tsv", segs, per_seg if intervals else None)
    plot_segmentation(segs, per_seg, out / "token_lengths.png")
    written, stats = ["tokens.tsv", "token_lengths.png"], None
    if intervals is not None:
        cfg = encoder.config
        stats = region_stats(segs, per_seg)
        write_json_atomic(out / "region_stats.json",
                          {"annotation": str(annotation), "format": annotation_format,
                           "token_assignment": "midpoint base (start + end - 1) // 2", "merge_ratio": cfg.merge_ratio,
                           "window": cfg.max_length,
                           "records": [f"{s.record}:{s.offset + 1}-{s.offset + len(s.ids)}" for s in segs],
                           "types": stats})
        written.append("region_stats.json")
    return {"segmentations": segs, "regions": per_seg, "stats": stats, "written": written, "config": encoder.config}
