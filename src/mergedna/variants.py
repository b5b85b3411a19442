"""Zero-shot variant-effect scores from the pretraining model (φ + ψ + ω + ζ and the base head).

**The score.** For a single-nucleotide variant REF→ALT at position p of a reference record:

1. *Window.* The context is p and ``h = (window - 1) // 2`` bases on each side, ``2h + 1``
   bases (the variant in the exact middle, so the reverse strand sees the mirror image of the
   same context). ``window`` defaults to the model's ``max_length``. Where the window would run
   off an end of the record, ``edge="shift"`` (default) slides it inside the record (the
   variant is then off-centre; a record shorter than the window is used whole) and
   ``edge="pad"`` keeps it centred and fills the missing bases with ``N``.
2. *Mask the variant's token* (``mask="token"``, default). The window (reference bases) goes
   through the encoder in eval mode (``model.mergedna``, the model's ``merge_ratio``); ``assign``
   names the token holding p, and every base of that token becomes ``MASK`` — the paper's AMTM masks
   whole tokens, so the bases merged with p would otherwise give it away. ``mask="base"`` masks p
   alone: the masked input then holds nothing of REF, whereas the token's extent is computed on the
   REF window and so depends on REF (docs/variant_scoring.md).
3. *Read the head.* The masked window goes through the whole model, re-tokenized as pretraining's
   AMTM pass does (``MergeDNAForPretraining.masked_logits``: masked and visible bases never share a
   token, each compressed at the merge ratio); ``log_softmax`` of the 4 base logits at p gives ``log P(b)``.
4. ``llr_fwd = log P(ALT) − log P(REF)``. With ``rc_average`` the same is done on the reverse
   complement of the window (the variant's base is then at ``len − 1 − p``, REF and ALT
   complemented) giving ``llr_rev``, and ``llr = (llr_fwd + llr_rev) / 2``; otherwise
   ``llr = llr_fwd``. Negative = the model finds ALT less likely than REF.

One forward pair (encoder, full model) per distinct (position, strand) serves every ALT allele
there; windows are batched. All windows of a run have the same length except near the ends of
records shorter than the window, so batches rarely need padding.

**Evaluation** (:func:`evaluate`): AUROC of the scores for a positive class (an INFO field) against
the rest, overall and per group of another INFO field, with a stratified bootstrap 95% interval;
reference predictors from INFO (CADD, phyloP) scored the same way beside the model.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import preset as preset_config
from .data.vcf import BASES, RegionReference, Variant, read_vcf
from .model import MergeDNAForPretraining
from .precision import autocast
from .pretrained import WEIGHTS_NAME
from .provenance import run_metadata
from .seqio import pad_batch, write_json_atomic, write_text_atomic
from .vocab import N, reverse_complement

EDGES = ("shift", "pad")
MASKS = ("token", "base")


def load_scoring_model(directory: str | os.PathLike) -> MergeDNAForPretraining:
    """The pretraining model of a checkpoint directory, in eval mode. A checkpoint without the
    decoders and base head (an encoder or fine-tuned classifier) is refused: from_pretrained would
    fill them with random weights and the scores would mean nothing."""
    from safetensors import safe_open

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a mergedna checkpoint (made by save_pretrained)?")
    with safe_open(str(path), framework="pt") as fh:
        stored = set(fh.keys())
    needed = ("lm_head.", "local_decoder.", "latent_decoder.", "mergedna.")
    lacking = [p.rstrip(".") for p in needed if not any(k.startswith(p) for k in stored)]
    if lacking:
        raise ValueError(f"{directory}: not a pretraining checkpoint: it has no {', '.join(lacking)} weights; "
                         "zero-shot scores need the whole pretraining model (decoders and base head)")
    model = MergeDNAForPretraining.from_pretrained(directory)
    missing = sorted(set(model.state_dict()) - stored)
    if missing:
        raise ValueError(f"{directory}: not a whole pretraining checkpoint: {len(missing)} weights missing "
                         f"(e.g. {missing[0]}); zero-shot scores need them all")
    return model.eval()


def random_scoring_model(preset: str, seed: int) -> MergeDNAForPretraining:
    """A pretraining model with random weights drawn with ``seed`` (the untrained floor)."""
    torch.manual_seed(seed)
    return MergeDNAForPretraining(preset_config(preset)).eval()


def context_window(ids: np.ndarray, offset: int, window: int, edge: str = "shift") -> tuple[np.ndarray, int]:
    """The context of base ``offset`` of ``ids`` (module docstring, step 1): ``(window ids, index
    of the variant in it)``."""
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
    half = max((window - 1) // 2, 0)
    length = len(ids)
    if edge == "pad":
        start, end = max(offset - half, 0), min(offset + half + 1, length)
        left, right = half - (offset - start), half - (end - 1 - offset)
        out = np.concatenate([np.full(left, N, ids.dtype), ids[start:end], np.full(right, N, ids.dtype)])
        return out, half
    size = min(2 * half + 1, length)
    start = min(max(offset - half, 0), length - size)
    return ids[start:start + size], offset - start


@torch.no_grad()
def masked_log_probs(model: MergeDNAForPretraining, windows: list[np.ndarray], centres: list[int],
                     precision: str = "fp32", mask_mode: str = "token") -> np.ndarray:
    """``log P(base)`` (B, 4) at ``centres[b]`` of ``windows[b]`` with the token holding it (or, with
    ``mask_mode="base"``, that base alone) masked (module docstring, steps 2–3). One encoder and one
    full forward for the whole batch (the full forward only with ``"base"``)."""
    if mask_mode not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask_mode!r}")
    ids, mask = pad_batch(windows)  # (B, N) each; mask: real bases
    centre = torch.tensor(centres)
    rows = torch.arange(len(windows))
    with autocast(precision):
        if mask_mode == "token":
            assign = model.mergedna(ids, mask).assign  # (B, N) base -> token
            token = assign[rows, centre]  # (B,) the token holding the variant
            masked = (assign == token[:, None]) & mask  # (B, N) every base of that token
        else:
            masked = torch.zeros_like(mask)
            masked[rows, centre] = True  # (B, N) the variant's base alone
        logits, _ = model.masked_logits(ids, masked, mask)  # (B, N, 4), tokenized as pretraining's pass 3
    return torch.log_softmax(logits[rows, centre].float(), dim=-1).numpy()


@dataclass
class VariantScores:
    """Scored SNVs in VCF order with their scores, the INFO keys, and a summary of the run."""

    variants: list[Variant]
    info_keys: list[str]
    llr: np.ndarray
    llr_fwd: np.ndarray
    llr_rev: np.ndarray | None
    summary: dict = field(default_factory=dict)


def _check_variants(vs, ref: RegionReference, skip_ref_mismatch: bool, skip_outside: bool):
    """Keep the variants the reference holds with a matching REF; -> (kept, locations, skipped)."""
    kept, where, skipped = [], [], Counter()
    for v in vs.variants:
        loc = ref.locate(v.chrom, v.pos)
        if loc is None:
            if skip_outside:
                skipped["outside_fasta"] += 1
                continue
            raise ValueError(f"{vs.path}, line {v.line}: {v.where}: not in {ref.path}: {ref.describe(v.chrom)}")
        record, offset = loc
        have = "ACGTN"[int(ref.ids[record][offset])]
        if have != v.ref:
            if skip_ref_mismatch:
                skipped["ref_mismatch"] += 1
                continue
            raise ValueError(f"{vs.path}, line {v.line}: REF mismatch at {v.where}: the VCF says {v.ref!r}, "
                             f"{ref.path} record {record!r} has {have!r} (use --skip-ref-mismatch to skip such records)")
        kept.append(v)
        where.append(loc)
    return kept, where, skipped


def score_variants(model: MergeDNAForPretraining, fasta: str | os.PathLike, vcf: str | os.PathLike,
                   window: int | None = None, rc_average: bool = False, edge: str = "shift", mask: str = "token",
                   skip_ref_mismatch: bool = False, skip_outside: bool = False, batch_size: int = 16,
                   precision: str = "fp32", progress: bool = True) -> VariantScores:
    """Score every SNV of ``vcf`` against ``fasta`` (module docstring). All input checks (REF,
    CHROM, position) run before any model work. ``window`` defaults to the model's max_length."""
    t0 = time.perf_counter()
    model.eval()
    window = window or model.config.max_length
    if window < 1:
        raise ValueError(f"window must be at least 1 base, got {window}")
    vs = read_vcf(vcf)
    ref = RegionReference(fasta, {v.chrom for v in vs.variants})
    kept, where, skipped = _check_variants(vs, ref, skip_ref_mismatch, skip_outside)
    skipped.update(vs.skipped)
    sites = sorted(set(where))  # one job per distinct (record, offset) and strand
    strands = (False, True) if rc_average else (False,)
    jobs = [(site, rc) for site in sites for rc in strands]
    logp: dict[tuple, np.ndarray] = {}
    t_model = time.perf_counter()
    bar = tqdm(total=len(kept), unit="variant", desc="score-variants", disable=not progress)
    done_sites = Counter(where)
    for k in range(0, len(jobs), batch_size):
        part = jobs[k:k + batch_size]
        windows, centres = [], []
        for (record, offset), rc in part:
            w, c = context_window(ref.ids[record], offset, window, edge)
            if rc:
                w, c = reverse_complement(w), len(w) - 1 - c
            windows.append(w)
            centres.append(c)
        for job, lp in zip(part, masked_log_probs(model, windows, centres, precision, mask)):
            logp[job] = lp
            if job[1] == strands[-1]:
                bar.update(done_sites[job[0]])
    bar.close()
    model_seconds = time.perf_counter() - t_model
    ref_i = np.array([BASES.index(v.ref) for v in kept], dtype=np.int64)
    alt_i = np.array([BASES.index(v.alt) for v in kept], dtype=np.int64)
    fwd = np.array([logp[(s, False)][a] - logp[(s, False)][r] for s, r, a in zip(where, ref_i, alt_i)])
    rev = None
    if rc_average:  # on the reverse strand the variant's bases are complemented: b -> 3 - b
        rev = np.array([logp[(s, True)][3 - a] - logp[(s, True)][3 - r] for s, r, a in zip(where, ref_i, alt_i)])
    llr = (fwd + rev) / 2 if rc_average else fwd
    total = time.perf_counter() - t0
    summary = {"vcf": str(vcf), "fasta": str(fasta), "records": vs.records, "scored": len(kept),
               "positions": len(sites), "forwards": len(jobs), "skipped": dict(sorted(skipped.items())),
               "window": window, "context_bases": 2 * ((window - 1) // 2) + 1, "edge": edge, "mask": mask,
               "rc_average": rc_average, "merge_ratio": model.config.merge_ratio, "precision": precision,
               "batch_size": batch_size, "model_seconds": model_seconds, "seconds": total,
               "variants_per_s": len(kept) / model_seconds if model_seconds > 0 else None}
    return VariantScores(kept, vs.info_keys, llr, fwd, rev, summary)


def write_scores(scores: VariantScores, path: str | os.PathLike) -> None:
    """TSV (atomically): CHROM POS ID REF ALT llr [llr_fwd llr_rev] then one column per INFO key
    (``.`` where a record lacks it)."""
    cols = ["CHROM", "POS", "ID", "REF", "ALT", "llr"] + (["llr_fwd", "llr_rev"] if scores.llr_rev is not None else [])
    lines = ["\t".join(cols + scores.info_keys)]
    for i, v in enumerate(scores.variants):
        vals = [v.chrom, str(v.pos), v.id, v.ref, v.alt, f"{scores.llr[i]:.6f}"]
        if scores.llr_rev is not None:
            vals += [f"{scores.llr_fwd[i]:.6f}", f"{scores.llr_rev[i]:.6f}"]
        lines.append("\t".join(vals + [v.info.get(k, ".") for k in scores.info_keys]))
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_scores(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a scores TSV written by :func:`write_scores`."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "llr" not in rows[0]:
        raise ValueError(f"{path}: not a score-variants TSV (no rows, or no 'llr' column)")
    return rows


# ---- evaluation -------------------------------------------------------------------------------

def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` (higher = positive) for the boolean ``positive``:
    the Mann–Whitney U with ties counted one half. None when a class is empty."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_interval(scores: np.ndarray, positive: np.ndarray, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the AUROC over ``n_boot`` resamples, positives and negatives each
    resampled with replacement to their own size (stratified), from ``numpy`` seed ``seed``."""
    from scipy.stats import rankdata

    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    sample = np.concatenate([pos[rng.integers(0, len(pos), (n_boot, len(pos)))],
                             neg[rng.integers(0, len(neg), (n_boot, len(neg)))]], axis=1)  # (n_boot, n)
    ranks = rankdata(sample, axis=1)
    u = ranks[:, : len(pos)].sum(1) - len(pos) * (len(pos) + 1) / 2
    aucs = u / (len(pos) * len(neg))
    tail = (1 - level) / 2
    return float(np.quantile(aucs, tail)), float(np.quantile(aucs, 1 - tail))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def evaluate(tables: dict[str, list[dict[str, str]]], label: str, positive: list[str],
             predictors: list[str] = (), group: str | None = None, group_as: dict[str, list[str]] | None = None,
             group_rest: str = "other", n_boot: int = 1000, seed: int = 0) -> dict:
    """AUROC of each score source for ``label`` in ``positive`` against every other labelled row.

    ``tables``: name -> rows of a scores TSV (same variants, same order); each contributes
    ``−llr`` (a lower LLR = more damaging). ``predictors``: INFO columns of the first table,
    ``NAME`` (higher = positive) or ``NAME:low`` (lower = positive). Groups: the values of the
    ``group`` column, or with ``group_as`` {group: [values]} (case-insensitive), every value not
    listed going to ``group_rest``. Rows whose label or score is missing (``.``) are left out
    of that source's AUROC; ``n_pos``/``n_neg`` say how many counted.
    """
    names = list(tables)
    first = tables[names[0]]
    key = [(r["CHROM"], r["POS"], r["REF"], r["ALT"]) for r in first]
    for name in names[1:]:
        if [(r["CHROM"], r["POS"], r["REF"], r["ALT"]) for r in tables[name]] != key:
            raise ValueError(f"scores {name!r} and {names[0]!r} do not hold the same variants in the same order")
    for col in [label] + ([group] if group else []) + [p.split(":")[0] for p in predictors]:
        if col not in first[0]:
            raise ValueError(f"column {col!r} not in the scores of {names[0]!r} (INFO keys are passed through as columns)")
    labels = np.array([r[label] for r in first])
    labelled = ~np.isin(labels, [".", ""])
    is_pos = np.isin(np.char.upper(labels.astype(str)), [p.upper() for p in positive])
    sources = {name: -np.array([_number(r["llr"]) for r in rows]) for name, rows in tables.items()}
    for p in predictors:
        col, _, sense = p.partition(":")
        vals = np.array([_number(r[col]) for r in first])
        sources[col] = -vals if sense == "low" else vals
    groups = {"all": np.ones(len(first), bool)}
    if group:
        values = np.char.lower(np.array([r[group] for r in first]).astype(str))
        if group_as:
            listed = np.zeros(len(first), bool)
            for gname, members in group_as.items():
                groups[gname] = np.isin(values, [m.lower() for m in members])
                listed |= groups[gname]
            groups[group_rest] = ~listed
        else:
            for value in sorted(set(values)):
                groups[value] = values == value
    out = {"label": label, "positive": list(positive), "group": group, "group_as": group_as,
           "group_rest": group_rest if group_as else None, "models": names,
           "predictors": list(predictors), "n_boot": n_boot, "bootstrap_seed": seed, "auroc": {}}
    for src, vals in sources.items():
        out["auroc"][src] = {}
        for gname, in_group in groups.items():
            use = in_group & labelled & ~np.isnan(vals)
            a = auroc(vals[use], is_pos[use])
            out["auroc"][src][gname] = {"auroc": a, "ci95": bootstrap_interval(vals[use], is_pos[use], n_boot, seed)
                                        if a is not None else None,
                                        "n_pos": int(is_pos[use].sum()), "n_neg": int((~is_pos[use]).sum())}
    return out


def markdown_table(result: dict) -> str:
    """The AUROC table: one row per score source, one column per group, ``auroc [lo, hi]``."""
    groups = list(next(iter(result["auroc"].values())))
    head = ["source"] + [f"{g} (n={v['n_pos']}+{v['n_neg']})" for g, v in
                         next(iter(result["auroc"].values())).items()]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for src, per in result["auroc"].items():
        cells = []
        for g in groups:
            e = per[g]
            ci = f" [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]" if e["ci95"] else ""
            cells.append("n/a" if e["auroc"] is None else f"{e['auroc']:.3f}{ci}")
        kind = "model, −LLR" if src in result["models"] else "INFO"
        lines.append(f"| {src} ({kind}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_files(scores: list[str | os.PathLike], label: str, positive: list[str], names: list[str] | None = None,
                   predictors: list[str] = (), group: str | None = None, group_as: dict[str, list[str]] | None = None,
                   group_rest: str = "other", n_boot: int = 1000, seed: int = 0, command: str | None = None) -> dict:
    """:func:`evaluate` on ``score-variants`` TSVs (named ``names``, default their stems), with each file's
    JSON summary (``<file>.json``, None where missing) as ``score_runs``, the files as ``scores`` and
    :func:`~mergedna.provenance.run_metadata` as ``meta``."""
    names = list(names or [Path(p).stem for p in scores])
    if len(names) != len(scores) or len(set(names)) != len(names):
        raise ValueError("--names needs one distinct name per --scores file")
    tables = {name: read_scores(path) for name, path in zip(names, scores)}
    result = evaluate(tables, label, positive, predictors, group, group_as, group_rest, n_boot, seed)
    runs = {}
    for name, path in zip(names, scores):
        side = Path(f"{path}.json")
        runs[name] = json.loads(side.read_text()) if side.is_file() else None
    result.update(scores={n: str(Path(p).resolve()) for n, p in zip(names, scores)}, score_runs=runs,
                  meta=run_metadata(command))
    return result


def results_markdown(result: dict) -> str:
    """``results.md`` of an :func:`evaluate_files` result: what was scored, the AUROC table, and the provenance
    of every score file and of the evaluation."""
    m = result["meta"]
    lines = [f"# Zero-shot variant effects: AUROC, {result['label']} in {{{', '.join(result['positive'])}}} vs the "
             "rest", "",
             f"Score sources: the models' −LLR (lower log P(ALT) − log P(REF) = more damaging) and INFO "
             f"predictors ({', '.join(result['predictors']) or 'none'}). 95% intervals: stratified bootstrap, "
             f"{result['n_boot']} resamples, seed {result['bootstrap_seed']}. Column n = positives + negatives with a "
             f"model score; INFO predictors leave out rows where they are missing.", "", markdown_table(result)]
    for name, run in result["score_runs"].items():
        if run:
            s, rm = run["summary"], run["meta"]
            src = run["model"].get("checkpoint") or f"preset {run['model']['preset']} random init, seed {run['model']['seed']}"
            lines.append(f"- {name}: {src}; window {s['window']} ({s['context_bases']} bases), edge {s['edge']}, "
                         f"mask {s.get('mask', 'token')}, "
                         f"rc_average {s['rc_average']}, {s['precision']}; {s['scored']} SNVs, "
                         f"{s['variants_per_s']:.1f} variants/s ({s['model_seconds']:.1f} s in the model, "
                         f"{rm['machine']['torch_threads']} thread(s)); `{rm['command']}`; {rm['date']}, commit "
                         f"{rm['git_commit']}{' (dirty)' if rm['git_dirty'] else ''}, {rm['machine']['cpu']}")
    lines.append(f"- evaluation: `{m['command']}`; {m['date']}, commit {m['git_commit']}"
                 f"{' (dirty)' if m['git_dirty'] else ''}, {m['machine']['cpu']}")
    return "\n".join(lines) + "\n"


def write_evaluation(result: dict, out: str | os.PathLike) -> list[Path]:
    """``out/metrics.json`` (the result) and ``out/results.md`` (:func:`results_markdown`), atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", result)
    write_text_atomic(out / "results.md", results_markdown(result))
    return [out / "metrics.json", out / "results.md"]
