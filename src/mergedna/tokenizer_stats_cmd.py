"""``mergedna tokenizer-stats``: the tokenizer diagnostics of :mod:`mergedna.tokenizer_stats` for a
checkpoint on a FASTA region, with the untrained tokenizer, run-length merging at the same budget
and fixed spans of 2 beside it. Windows are cut as ``mergedna segment`` cuts them (non-overlapping,
the model's ``max_length`` unless ``--window``, the last one shorter)."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from .cli_args import add_model_source
from .config import preset as preset_config
from .embed import load_encoder
from .precision import PRECISIONS, autocast
from .provenance import run_metadata, write_json_atomic
from .segment import iter_regions
from .seqio import pad_batch
from .tokenizer_stats import diagnose_batches, reference_seed, untrained_encoder

LABELS = {"model": "model", "untrained": "untrained (same seed)", "run_length": "run-length, same budget",
          "fixed2": "fixed spans of 2"}


def window_batches(pieces: list[np.ndarray], window: int, batch_size: int):
    """Non-overlapping windows of ``window`` bases of each id array, as PAD-padded (B, N) batches."""
    windows = [p[s : s + window] for p in pieces for s in range(0, len(p), window) if len(p[s : s + window]) >= 2]
    for k in range(0, len(windows), batch_size):
        yield pad_batch(windows[k : k + batch_size])[0]  # (B, N)


def format_table(summary: dict) -> list[str]:
    head = f"{'tokenizer':<26s}{'bases/token':>12s}{'P(eq|bnd)':>11s}{'P(eq|in)':>10s}{'F1 vs model':>13s}{'agree':>8s}"
    lines = [head]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, r in summary.items():
        lines.append(f"{LABELS.get(name, name):<26s}{fmt(r['mean_token_length']):>12s}"
                     f"{fmt(r['p_equal_at_boundary']):>11s}{fmt(r['p_equal_within']):>10s}"
                     f"{fmt(r.get('f1_vs_model')):>13s}{fmt(r.get('pair_agreement_vs_model')):>8s}")
    return lines


def cmd_tokenizer_stats(args) -> int:
    overrides = {"merge_ratio": args.merge_ratio} if args.merge_ratio is not None else {}
    if args.model:
        encoder = load_encoder(args.model, **overrides)
    else:
        encoder = untrained_encoder(preset_config(args.preset, **overrides), args.seed)
        print(f"note: preset {args.preset!r} with random weights (seed {args.seed}): the model is itself untrained")
    cfg = encoder.config
    seed, seed_from = reference_seed(args.model, args.reference_seed if args.model else args.seed)
    reference = untrained_encoder(cfg, seed)
    window = args.window or cfg.max_length
    pieces, names = [], []
    for name, start, ids in iter_regions(args.fasta, args.region):
        pieces.append(ids)
        names.append(f"{name}:{start + 1}-{start + len(ids)}")
    with torch.no_grad(), autocast(args.precision):
        summary = diagnose_batches(encoder.local_encoder, window_batches(pieces, window, args.batch_size),
                                   cfg.merge_ratio, reference.local_encoder)
    if not summary:
        raise ValueError(f"{args.fasta}: no window of at least 2 bases in the selected records")
    print(f"{', '.join(names)}: {sum(map(len, pieces))} bases in windows of {window}, merge_ratio {cfg.merge_ratio}, "
          f"untrained reference seed {seed} ({seed_from})")
    print("\n".join(format_table(summary)))
    result = {"meta": run_metadata(), "model": args.model or f"preset {args.preset} (seed {args.seed})",
              "fasta": str(args.fasta), "regions": names, "window": window, "merge_ratio": cfg.merge_ratio,
              "precision": args.precision, "reference_seed": seed, "reference_seed_from": seed_from,
              "definitions": "docs/tokenizer_diagnostics.md", "tokenizers": summary}
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mergedna tokenizer-stats``."""
    p = subparsers.add_parser("tokenizer-stats", help="token boundary diagnostics of a checkpoint on FASTA, beside "
                                                      "the untrained, run-length and fixed-span tokenizers")
    add_model_source(p, model_help="checkpoint directory", preset_help="random weights (plumbing checks only)")
    p.add_argument("--reference-seed", type=int, help="init seed of the untrained reference (default: the run's "
                                                      "seed from run_config.json beside the checkpoint, else 0)")
    p.add_argument("--fasta", required=True, help="FASTA file (plain or gzip)")
    p.add_argument("--region", action="append", help="RECORD or RECORD:START-END (1-based, inclusive); repeatable")
    p.add_argument("--merge-ratio", type=float, help="override the model's merge_ratio (L/N)")
    p.add_argument("--window", type=int, help="bases per window (default the model's max_length)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast precision (default fp32)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=cmd_tokenizer_stats)
    return p
