"""Token length by region class (the paper's Fig. 3 claim: finer tokens in information-dense
regions, merged repeats), for any tokenizer beside the untrained, run-length and fixed-span ones.

Classes, one per base of the analysed region (precedence in this order):

1. ``exon``: a RefSeq exon (SAF table ``GeneID Chr Start End Strand``, 1-based inclusive);
2. ``repeat``: a low-complexity or tandem-repeat call (:func:`call_repeats`) outside exons;
3. ``intron``: inside a gene's span (first to last base of its exons, per GeneID), outside exons
   and repeats;
4. ``intergenic``: the rest. Bases that are N are class ``N`` and left out.

Exons keep their bases when a repeat call overlaps them, so the exon class is the whole coding /
UTR sequence; intron and intergenic then mean "non-repeat intron / intergenic", which is the
comparison the claim needs (repeats against the background they sit in).

A token belongs to the class of its **midpoint base** (``(start + end - 1) // 2``, as
``mergedna segment`` assigns tokens to regions). Mean token length of a class = total bases of
its tokens / its tokens. Uncertainty: windows are the sampling unit; a bootstrap over windows
(resampling whole windows with replacement) gives a 95% percentile interval.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .segment import _union, record_regions
from .vocab import NUM_BASES, PAD, decode

CLASSES = ("exon", "repeat", "intron", "intergenic")
N_CLASS = len(CLASSES)  # label of N bases (excluded)


def read_refseq_exons(path: str | Path) -> list[tuple[str, int, int, str]]:
    """``(chrom, start, end, gene_id)`` 0-based half-open from a SAF exon table (header
    ``GeneID Chr Start End Strand``, 1-based inclusive; plain or gzip)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as fh:
        for number, line in enumerate(fh, 1):
            f = line.rstrip("\n").split("\t")
            if not line.strip() or f[0] == "GeneID":
                continue
            try:
                out.append((f[1], int(f[2]) - 1, int(f[3]), f[0]))
            except (IndexError, ValueError):
                raise ValueError(f"{path}, line {number}: not a SAF line (GeneID Chr Start End Strand): "
                                 f"{line.strip()[:80]!r}") from None
            if out[-1][2] <= out[-1][1]:
                raise ValueError(f"{path}, line {number}: end before start")
    return out


def gene_annotation(exons) -> list[tuple[str, int, int, str]]:
    """``exon`` intervals and per-GeneID ``gene`` spans (first exon start to last exon end, per chromosome)."""
    spans: dict[tuple[str, str], list[int]] = {}
    for chrom, s, e, gene in exons:
        span = spans.setdefault((chrom, gene), [s, e])
        span[0], span[1] = min(span[0], s), max(span[1], e)
    return [(c, s, e, "exon") for c, s, e, _ in exons] + [(c, s, e, "gene") for (c, _), (s, e) in spans.items()]


def call_repeats(seq: str) -> dict[str, list[tuple[int, int]]]:
    """Low-complexity and tandem-repeat intervals (0-based half-open) of ``seq``:

    * ``sdust``: pydustmasker's ``DustMasker`` (the symmetric DUST algorithm of NCBI dustmasker and
      minimap2's sdust) with its defaults, window 64 and score threshold 20;
    * ``str``: pytrf's ``STRFinder`` (the Krait engine): perfect microsatellites of motif 1-6 with
      its default minimum repeat counts (12, 7, 5, 4, 4, 4).
    """
    import pydustmasker
    import pytrf

    dust = [(int(s), int(e)) for s, e in pydustmasker.DustMasker(seq).intervals] if len(seq) >= 4 else []
    strs = [(r.start - 1, r.end) for r in pytrf.STRFinder("seq", seq)]  # pytrf: 1-based inclusive
    return {"sdust": dust, "str": strs}


def class_labels(ids: np.ndarray, regions: list[tuple[int, int, str]], repeats) -> np.ndarray:
    """(n,) uint8 class index per base (``CLASSES``; ``N_CLASS`` on N). ``regions``: ``exon`` and
    ``gene`` intervals, ``repeats``: intervals, both in the coordinates of ``ids``."""
    labels = np.full(len(ids), CLASSES.index("intergenic"), dtype=np.uint8)
    order = [("gene", "intron"), ("repeat", "repeat"), ("exon", "exon")]  # later paints win
    for kind, cls in order:
        ivs = [(s, e) for s, e in repeats] if kind == "repeat" else [(s, e) for s, e, k in regions if k == kind]
        if ivs:
            for s, e in zip(*_union(ivs)):
                labels[max(s, 0) : max(e, 0)] = CLASSES.index(cls)
    labels[ids >= NUM_BASES] = N_CLASS
    return labels


def region_classes(ids: np.ndarray, record: str, offset: int, exons) -> tuple[np.ndarray, dict]:
    """Class labels of ``ids`` = record bases ``[offset, offset + len(ids))`` and the repeat calls
    (counts and bases per caller). ``exons`` from :func:`read_refseq_exons`; chromosome names match
    with or without ``chr``, and a record named ``chrom:start-end`` is that slice of ``chrom``."""
    end = offset + len(ids)
    regions = [(s - offset, e - offset, k) for s, e, k in record_regions(gene_annotation(exons), record, end)
               if e > offset]
    calls = call_repeats(decode(ids))
    repeats = calls["sdust"] + calls["str"]
    info = {caller: {"intervals": len(ivs), "bases": int(sum(e - s for s, e in zip(*_union(ivs))) if ivs else 0)}
            for caller, ivs in calls.items()}
    info["union_bases"] = int(sum(e - s for s, e in zip(*_union(repeats)))) if repeats else 0
    return class_labels(ids, regions, repeats), info


def sample_windows(ids: np.ndarray, n: int, window: int, seed: int, max_n_fraction: float = 0.1) -> np.ndarray:
    """Starts of up to ``n`` distinct windows of ``window`` bases drawn uniformly (numpy generator
    ``seed``) among those with at most ``max_n_fraction`` N, sorted."""
    if len(ids) < window:
        raise ValueError(f"the region has {len(ids)} bases, fewer than one window of {window}")
    is_n = np.r_[0, np.cumsum(ids >= NUM_BASES)]
    starts = np.arange(len(ids) - window + 1)
    ok = starts[(is_n[starts + window] - is_n[starts]) <= max_n_fraction * window]
    if ok.size == 0:
        raise ValueError(f"no window of {window} bases with at most {max_n_fraction:.0%} N in the region")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ok, size=min(n, ok.size), replace=False))


def window_batch(ids: np.ndarray, starts: np.ndarray, window: int) -> torch.Tensor:
    """(len(starts), window) long tensor of the windows."""
    idx = starts[:, None] + np.arange(window)[None, :]  # (W, window)
    return torch.from_numpy(ids[idx].astype(np.int64))


def class_sums(assign: torch.Tensor, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window and class, summed token lengths and token counts (W, C) of full windows
    ``assign`` (W, window), tokens classed by the label of their midpoint base; ``labels`` (W, window)."""
    a = assign.cpu().numpy()
    W, n = a.shape
    lengths, counts = np.zeros((W, N_CLASS + 1)), np.zeros((W, N_CLASS + 1))
    for w in range(W):  # one window at a time: tokens are runs of equal assign
        starts = np.flatnonzero(np.r_[True, a[w, 1:] != a[w, :-1]])
        ends = np.r_[starts[1:], n]
        cls = labels[w, (starts + ends - 1) // 2]
        np.add.at(lengths[w], cls, ends - starts)
        np.add.at(counts[w], cls, 1)
    return lengths[:, :N_CLASS], counts[:, :N_CLASS]


def bootstrap_means(lengths: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> dict[str, dict]:
    """Per class: mean token length (pooled over windows), tokens, windows with such tokens, the
    bootstrap sd and 95% percentile interval of the mean (resampling windows)."""
    rng = np.random.default_rng(seed)
    W = lengths.shape[0]
    mult = np.stack([np.bincount(rng.integers(0, W, W), minlength=W) for _ in range(n_boot)])  # (n_boot, W)
    bl, bc = mult @ lengths, mult @ counts  # (n_boot, C)
    out = {}
    for c, name in enumerate(CLASSES):
        tok = counts[:, c].sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = bl[:, c] / bc[:, c]
        boot = boot[np.isfinite(boot)]
        out[name] = {"mean_token_length": float(lengths[:, c].sum() / tok) if tok else None, "tokens": int(tok),
                     "windows": int((counts[:, c] > 0).sum()),
                     "bootstrap_sd": float(boot.std(ddof=1)) if boot.size > 1 else None,
                     "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))] if boot.size else None}
    return out


@torch.no_grad()
def tokenize_windows(tokenize, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """assign (W, window) of ``tokenize(ids, base_mask) -> assign`` run over ``batch`` in chunks."""
    parts = []
    for k in range(0, batch.shape[0], batch_size):
        ids = batch[k : k + batch_size]
        parts.append(tokenize(ids, ids != PAD))
    return torch.cat(parts)


def region_table(tokenizers: dict, ids: np.ndarray, labels: np.ndarray, starts: np.ndarray, window: int,
                 batch_size: int = 32, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Mean token length per class for each ``tokenizers[label] = fn(ids, base_mask) -> assign`` on
    the windows at ``starts`` (``labels`` the class per base of ``ids``)."""
    batch = window_batch(ids, starts, window)  # (W, window)
    lab = labels[starts[:, None] + np.arange(window)[None, :]]  # (W, window)
    table = {}
    for label, fn in tokenizers.items():
        lengths, counts = class_sums(tokenize_windows(fn, batch, batch_size), lab)
        table[label] = {"classes": bootstrap_means(lengths, counts, n_boot, seed),
                        "overall_mean_token_length": float(lengths.sum() / counts.sum())}
    return table


def class_bases(labels: np.ndarray) -> dict[str, int]:
    """Bases per class (N left out)."""
    return {name: int((labels == c).sum()) for c, name in enumerate(CLASSES)}


def format_markdown(table: dict, bases: dict[str, int]) -> list[str]:
    """A Markdown table: classes as rows, tokenizers as columns, ``mean [95% CI]`` per cell, and
    the tokens behind each mean."""
    names = list(table)
    lines = ["| class | bases in windows | " + " | ".join(names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for cls in CLASSES:
        cells = []
        for name in names:
            r = table[name]["classes"][cls]
            cells.append("–" if r["mean_token_length"] is None else
                         f"{r['mean_token_length']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] (n={r['tokens']})")
        lines.append(f"| {cls} | {bases[cls]} | " + " | ".join(cells) + " |")
    lines.append("| all | {} | ".format(sum(bases.values())) +
                 " | ".join(f"{table[n]['overall_mean_token_length']:.3f}" for n in names) + " |")
    return lines


def plot_regions(table: dict, path: str | Path, title: str) -> None:
    """Grouped bars: one group per class, one bar per tokenizer, 95% bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(CLASSES) * max(1, len(names)) * 0.45), 4.2))
    x = np.arange(len(CLASSES))
    for i, name in enumerate(names):
        rows = [table[name]["classes"][c] for c in CLASSES]
        means = np.array([np.nan if r["mean_token_length"] is None else r["mean_token_length"] for r in rows])
        lo = np.array([np.nan if r["ci95"] is None else r["ci95"][0] for r in rows])
        hi = np.array([np.nan if r["ci95"] is None else r["ci95"][1] for r in rows])
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, label=name,
               yerr=np.vstack([means - lo, hi - means]), capsize=2)
    ax.set_xticks(x, CLASSES)
    ax.set_ylabel("mean token length (bases)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
