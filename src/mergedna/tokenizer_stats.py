"""Tokenizer diagnostics: what the Local Encoder's boundaries look like, beside three baselines.

Everything here is a pure function of ``ids`` (B, N), ``assign`` (B, N) base -> token (contiguous
spans, docs/method.md §4) and ``base_mask`` (B, N) real bases (a prefix of each row). Definitions (also in
docs/tokenizer_diagnostics.md):

* **pairs**: adjacent real bases (i, i+1) of one row, N - 1 per row of N real bases.
* **boundary** between i and i+1: ``assign[i] != assign[i+1]`` on a pair.
* **mean token length**: real bases / tokens, pooled over all rows (tokens = boundaries + 1 per row).
* **P(equal | boundary)**, **P(equal | within)**: share of pairs with ``x_i == x_{i+1}`` among pairs
  that are (are not) a boundary; only pairs of two called bases (A, C, G, T) count.
* **boundary F1** of tokenization a against b: ``2 |Ba ∩ Bb| / (|Ba| + |Bb|)`` over the boundary
  sets (1 when both have none); symmetric. **pair agreement**: the share of pairs on which both
  say the same (boundary or not).

Baselines at the model's own token budget (same ``target_lengths`` / ``merge_budget`` schedule,
same planner :func:`~mergedna.merging.adjacent_merge_plan`, same scope and window):

* **run-length**: the planner fed one-hot base vectors instead of learned grouping embeddings
  (a merged token's vector is the size-weighted mean of its bases', re-normalised), so equal
  neighbours score 1, different ones 0, and ties go by position. While the budget is at most the
  number of mergeable equal-neighbour pairs, only identical neighbours merge.
* **fixed spans of 2**: base j -> token j // 2 (:func:`~mergedna.merging.fixed_span_plan`).
* **untrained**: the same architecture built with the same seed, before training (the caller
  supplies it; :func:`untrained_encoder` builds one as the trainer does).

Counts are plain sums (:func:`collect_counts`), so they add over batches and, under data
parallelism, over processes; :func:`summarise` turns them into rates at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from .merging import (Tokens, adjacent_merge_plan, apply_merge, compose_assign, fixed_span_plan, merge_budget,
                      target_lengths)
from .seqio import pad_batch
from .vocab import NUM_BASES, PAD

BASELINES = ("untrained", "run_length", "fixed2")
_OWN = ("bases", "tokens", "pairs", "boundaries", "eq_boundary", "called_boundary", "eq_within", "called_within")
_VS = ("both", "agree")  # per tokenization, against the model: shared boundaries, agreeing pairs


def pair_mask(base_mask: torch.Tensor) -> torch.Tensor:
    """(B, N-1) bool: i and i+1 are both real bases."""
    return base_mask[:, :-1] & base_mask[:, 1:]


def boundaries(assign: torch.Tensor, base_mask: torch.Tensor) -> torch.Tensor:
    """(B, N-1) bool: a token boundary between bases i and i+1 (False off real pairs)."""
    return (assign[:, 1:] != assign[:, :-1]) & pair_mask(base_mask)


def tokenization_counts(ids: torch.Tensor, assign: torch.Tensor, base_mask: torch.Tensor) -> dict[str, float]:
    """Sums for one tokenization of a batch: bases, tokens, pairs, boundaries, and the equal-neighbour
    counts among called-base pairs at boundaries / within tokens."""
    pairs = pair_mask(base_mask)
    bnd = boundaries(assign, base_mask)
    called = pairs & (ids[:, :-1] < NUM_BASES) & (ids[:, 1:] < NUM_BASES)
    equal = ids[:, 1:] == ids[:, :-1]
    rows = base_mask.any(1)
    return {"bases": float(base_mask.sum()), "tokens": float(bnd.sum() + rows.sum()), "pairs": float(pairs.sum()),
            "boundaries": float(bnd.sum()),
            "eq_boundary": float((called & bnd & equal).sum()), "called_boundary": float((called & bnd).sum()),
            "eq_within": float((called & ~bnd & equal).sum()), "called_within": float((called & ~bnd).sum())}


def agreement_counts(assign_a: torch.Tensor, assign_b: torch.Tensor, base_mask: torch.Tensor) -> dict[str, float]:
    """Shared boundaries (``both``) and pairs on which a and b agree (``agree``)."""
    pairs = pair_mask(base_mask)
    ba, bb = boundaries(assign_a, base_mask), boundaries(assign_b, base_mask)
    return {"both": float((ba & bb).sum()), "agree": float(((ba == bb) & pairs).sum())}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def boundary_f1(assign_a: torch.Tensor, assign_b: torch.Tensor, base_mask: torch.Tensor) -> float:
    """F1 of the two boundary sets (module docstring); 1.0 when neither has a boundary."""
    na, nb = float(boundaries(assign_a, base_mask).sum()), float(boundaries(assign_b, base_mask).sum())
    both = agreement_counts(assign_a, assign_b, base_mask)["both"]
    return 2 * both / (na + nb) if na + nb else 1.0


def one_hot_metric(ids: torch.Tensor) -> torch.Tensor:
    """(B, N, 5) float: one channel per A, C, G, T, N; zero on PAD (and MASK)."""
    return F.one_hot(ids.clamp(0, NUM_BASES + 1), NUM_BASES + 2)[..., : NUM_BASES + 1].float()


def run_length_assign(ids: torch.Tensor, base_mask: torch.Tensor, ratio, steps: int, scope: str = "sequence",
                      window: int = 16) -> torch.Tensor:
    """Identical-neighbour merging at the Local Encoder's token budget: ``steps`` merge steps of
    :func:`adjacent_merge_plan` on one-hot base vectors (module docstring). Returns assign (B, N)."""
    B, N = ids.shape
    ar = torch.arange(N, device=ids.device)
    tokens = Tokens(z=one_hot_metric(ids), size=base_mask.float(), pos=ar.float().expand(B, N), mask=base_mask)
    assign = ar.expand(B, N)
    target = target_lengths(tokens.lengths, ratio, steps)
    for i in range(steps):
        r = merge_budget(tokens.lengths, target, steps - i)
        plan = adjacent_merge_plan(F.normalize(tokens.z, dim=-1), tokens.mask, r, scope, window)
        tokens, assign = apply_merge(tokens, plan), compose_assign(assign, plan)
    return assign


def fixed_span_assign(base_mask: torch.Tensor, span: int = 2) -> torch.Tensor:
    """Base j -> token j // span (assign (B, N))."""
    B, N = base_mask.shape
    ar = torch.arange(N, device=base_mask.device).expand(B, N)
    return compose_assign(ar, fixed_span_plan(base_mask, span))


def untrained_encoder(config, seed: int):
    """The encoder (φ + ψ) as the trainer initialises it: ``torch.manual_seed(seed)`` then
    ``MergeDNAForPretraining(config)``. The global RNG state is left as it was."""
    from .model import MergeDNAForPretraining

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MergeDNAForPretraining(config).mergedna.eval()


def reference_seed(model_dir: str | None, seed: int | None) -> tuple[int, str]:
    """The init seed of the untrained reference: ``seed`` if given, else the ``train.seed`` of the
    ``run_config.json`` beside (or above) the checkpoint, else 0."""
    if seed is not None:
        return seed, "given"
    if model_dir:
        for cand in (Path(model_dir) / "run_config.json", Path(model_dir).parent / "run_config.json"):
            if cand.is_file():
                return int(json.loads(cand.read_text())["train"]["seed"]), str(cand)
    return 0, "default (no run_config.json found)"


def baseline_assigns(ids: torch.Tensor, base_mask: torch.Tensor, config, ratio) -> dict[str, torch.Tensor]:
    """Run-length merging at the model's budget and fixed spans of 2, for a batch."""
    return {"run_length": run_length_assign(ids, base_mask, ratio, config.local_encoder_layers, config.merge_scope,
                                            config.window_size),
            "fixed2": fixed_span_assign(base_mask, 2)}


def collect_counts(ids: torch.Tensor, base_mask: torch.Tensor, assigns: dict[str, torch.Tensor],
                   counts: dict[str, float] | None = None) -> dict[str, float]:
    """Add one batch's sums to ``counts`` (flat keys ``name/count``). ``assigns`` must hold
    ``model``; every other tokenization is also compared with it."""
    counts = {} if counts is None else counts
    ref = assigns["model"]
    for name, assign in assigns.items():
        part = tokenization_counts(ids, assign, base_mask)
        if name != "model":
            part |= agreement_counts(ref, assign, base_mask)
        for k, v in part.items():
            counts[f"{name}/{k}"] = counts.get(f"{name}/{k}", 0.0) + v
    return counts


def summarise(counts: dict[str, float]) -> dict[str, dict]:
    """Rates per tokenization from :func:`collect_counts` sums: ``mean_token_length``,
    ``p_equal_at_boundary``, ``p_equal_within``, and (baselines) ``f1_vs_model``,
    ``pair_agreement_vs_model``; the raw counts beside them."""
    names = dict.fromkeys(k.split("/")[0] for k in counts)
    model_b = counts.get("model/boundaries", 0.0)
    out = {}
    for name in names:
        c = {k.split("/", 1)[1]: v for k, v in counts.items() if k.startswith(name + "/")}
        row = {"mean_token_length": _ratio(c["bases"], c["tokens"]),
               "p_equal_at_boundary": _ratio(c["eq_boundary"], c["called_boundary"]),
               "p_equal_within": _ratio(c["eq_within"], c["called_within"])}
        if "both" in c:
            den = model_b + c["boundaries"]
            row["f1_vs_model"] = 2 * c["both"] / den if den else 1.0
            row["pair_agreement_vs_model"] = _ratio(c["agree"], c["pairs"])
        out[name] = row | {"counts": {k: int(v) for k, v in c.items()}}
    return out


def flat_row(summary: dict[str, dict], prefix: str = "tok") -> dict[str, float]:
    """The rates of :func:`summarise` as flat ``{prefix}_{name}_{rate}`` keys for metrics.jsonl
    (the model's own without the name: ``tok_mean_token_length``)."""
    row = {}
    for name, rates in summary.items():
        head = prefix if name == "model" else f"{prefix}_{name}"
        row |= {f"{head}_{k}": v for k, v in rates.items() if k != "counts" and v is not None}
    return row


@torch.no_grad()
def window_batches(pieces: list, window: int, batch_size: int):
    """Non-overlapping windows of ``window`` bases of each id array (as ``mergedna segment`` cuts them, the
    last one shorter; windows under 2 bases dropped), as PAD-padded (B, N) batches."""
    windows = [p[s : s + window] for p in pieces for s in range(0, len(p), window) if len(p[s : s + window]) >= 2]
    for k in range(0, len(windows), batch_size):
        yield pad_batch(windows[k : k + batch_size])[0]  # (B, N)


def diagnose_batches(local_encoder, batches: Iterable[torch.Tensor], ratio, reference=None,
                     reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, dict]:
    """Tokenize each (B, N) PAD-padded batch with ``local_encoder`` (a LocalEncoder, called as
    ``local_encoder(ids, base_mask, ratio)``) at ``ratio``, and with the baselines: ``reference``
    (the untrained LocalEncoder, optional), run-length at the same budget, fixed spans of 2.
    ``reduce`` sums the count vector across processes (e.g. an all-reduce). Returns
    :func:`summarise` of the pooled counts. The caller sets eval mode and any autocast."""
    config = local_encoder.cfg
    device = next(local_encoder.parameters()).device
    # every process must all-reduce the same keys in the same order, also one that got no batch:
    # seed the counts with zeros from a two-base probe (the key set depends only on the tokenizers)
    probe = torch.zeros(1, 2, dtype=torch.long, device=device)
    probe_assigns = {"model": torch.zeros_like(probe), **({"untrained": torch.zeros_like(probe)} if reference is not None else {}),
                     **baseline_assigns(probe, probe != PAD, config, ratio)}
    counts = dict.fromkeys(collect_counts(probe, probe != PAD, probe_assigns), 0.0)
    for ids in batches:
        ids = ids.to(device)
        base_mask = ids != PAD
        assigns = {"model": local_encoder(ids, base_mask, ratio).assign}
        if reference is not None:
            assigns["untrained"] = reference(ids, base_mask, ratio).assign
        assigns |= baseline_assigns(ids, base_mask, config, ratio)
        collect_counts(ids, base_mask, assigns, counts)
    if reduce is not None:
        keys = list(counts)
        total = reduce(torch.tensor([counts[k] for k in keys], dtype=torch.float64))
        counts = dict(zip(keys, total.tolist()))
    return summarise(counts)


def validation_row(local_encoder, reference, batches: Iterable[torch.Tensor], ratio,
                   reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """The diagnostics of :func:`diagnose_batches` as flat ``tok_*`` keys for a ``split: val`` row of
    metrics.jsonl, with ``local_encoder`` (and ``reference``) in eval mode for the call, their
    train/eval state restored afterwards."""
    was = local_encoder.training
    local_encoder.eval()
    if reference is not None:
        reference.eval()
    try:
        return flat_row(diagnose_batches(local_encoder, batches, ratio, reference, reduce))
    finally:
        local_encoder.train(was)


def diagnose_fasta(encoder, reference, fasta, regions: list[str] | None = None, window: int | None = None,
                   batch_size: int = 8, precision: str = "fp32") -> dict:
    """:func:`diagnose_batches` of ``encoder`` (a :class:`~mergedna.model.MergeDNAModel`) over the records or
    ``regions`` of ``fasta``, cut into non-overlapping windows of ``window`` bases (default the model's
    ``max_length``), ``reference`` (an encoder, e.g. :func:`untrained_encoder`) beside it. Returns
    ``regions`` (``name:start-end``, 1-based), ``bases``, ``window``, ``merge_ratio`` and ``tokenizers``."""
    from .precision import autocast
    from .segment import iter_regions

    cfg = encoder.config
    window = window or cfg.max_length
    pieces, names = [], []
    for name, start, ids in iter_regions(fasta, regions):
        pieces.append(ids)
        names.append(f"{name}:{start + 1}-{start + len(ids)}")
    with torch.no_grad(), autocast(precision):
        summary = diagnose_batches(encoder.local_encoder, window_batches(pieces, window, batch_size),
                                   cfg.merge_ratio, reference.local_encoder)
    if not summary:
        raise ValueError(f"{fasta}: no window of at least 2 bases in the selected records")
    return {"regions": names, "bases": sum(map(len, pieces)), "window": window, "merge_ratio": cfg.merge_ratio,
            "tokenizers": summary}
