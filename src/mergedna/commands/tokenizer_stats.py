"""``mergedna tokenizer-stats``: the tokenizer diagnostics of :mod:`mergedna.tokenizer_stats` for a
checkpoint on a FASTA region, with the untrained tokenizer, run-length merging at the same budget
and fixed spans of 2 beside it. Windows are cut as ``mergedna segment`` cuts them (non-overlapping,
the model's ``max_length`` unless ``--window``, the last one shorter)."""

from __future__ import annotations

import argparse

from ..provenance import run_metadata, write_json_atomic
from ..tokenizer_stats import diagnose_fasta, reference_seed, untrained_encoder
from ._common import add_fasta_regions, add_precision, encoder_from_args

LABELS = {"model": "model", "untrained": "untrained (same seed)", "run_length": "run-length, same budget",
          "fixed2": "fixed spans of 2"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tokenizer-stats", help="token boundary diagnostics of a checkpoint on FASTA, beside "
                                                      "the untrained, run-length and fixed-span tokenizers")
    add_fasta_regions(p, batch_default=8)
    p.add_argument("--reference-seed", type=int, help="init seed of the untrained reference (default: the run's "
                                                      "seed from run_config.json beside the checkpoint, else 0)")
    p.add_argument("--window", type=int, help="bases per window (default the model's max_length)")
    add_precision(p, "fp32", "exact counts, comparable across machines")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=run)
    return p


def format_table(summary: dict) -> list[str]:
    head = f"{'tokenizer':<26s}{'bases/token':>12s}{'P(eq|bnd)':>11s}{'P(eq|in)':>10s}{'F1 vs model':>13s}{'agree':>8s}"
    lines = [head]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, r in summary.items():
        lines.append(f"{LABELS.get(name, name):<26s}{fmt(r['mean_token_length']):>12s}"
                     f"{fmt(r['p_equal_at_boundary']):>11s}{fmt(r['p_equal_within']):>10s}"
                     f"{fmt(r.get('f1_vs_model')):>13s}{fmt(r.get('pair_agreement_vs_model')):>8s}")
    return lines


def run(args) -> int:
    encoder, note = encoder_from_args(args, "the model is itself untrained")
    if note:
        print(note)
    seed, seed_from = reference_seed(args.model, args.reference_seed if args.model else args.seed)
    found = diagnose_fasta(encoder, untrained_encoder(encoder.config, seed), args.fasta, args.region, args.window,
                           args.batch_size, args.precision)
    print(f"{', '.join(found['regions'])}: {found['bases']} bases in windows of {found['window']}, merge_ratio "
          f"{found['merge_ratio']}, untrained reference seed {seed} ({seed_from})")
    print("\n".join(format_table(found["tokenizers"])))
    result = {"meta": run_metadata(), "model": args.model or f"preset {args.preset} (seed {args.seed})",
              "fasta": str(args.fasta), "regions": found["regions"], "window": found["window"],
              "merge_ratio": found["merge_ratio"], "precision": args.precision, "reference_seed": seed,
              "reference_seed_from": seed_from, "definitions": "docs/tokenizer_diagnostics.md",
              "tokenizers": found["tokenizers"]}
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0
