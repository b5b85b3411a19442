"""``mergedna embed``: :func:`mergedna.embed.embed_file` from a checkpoint; defaults are
:func:`~mergedna.embed.iter_embeddings`'s."""

from __future__ import annotations

import argparse

from ..embed import embed_file, iter_embeddings, load_encoder
from ._common import add_merge_ratio, add_precision, merge_ratio_override, signature_defaults

DEFAULTS = signature_defaults(iter_embeddings)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("embed", help="embed sequences (FASTA or CSV/TSV) to .npy or Parquet")
    p.add_argument("--model", required=True, help="checkpoint directory (any mergedna checkpoint)")
    p.add_argument("--input", required=True, help="FASTA or CSV/TSV file (.gz too)")
    p.add_argument("--out", required=True, help="output .npy (with an .ids.tsv sidecar) or .parquet")
    p.add_argument("--per-base", action="store_true", help="one vector per base (token vector via assign)")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement's embedding")
    p.add_argument("--chunk-length", type=int, help="window for long sequences (default: the model's max_length)")
    p.add_argument("--chunk-overlap", type=int, help="overlap of windows (default: a quarter of the window)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="(default: %(default)s)")
    add_merge_ratio(p)
    add_precision(p, DEFAULTS["precision"], "fp32 gives exact embeddings")
    p.add_argument("--sequence-column", help="CSV/TSV sequence column (default: sequence/seq/...)")
    p.add_argument("--id-column", help="CSV/TSV id column (default: name/id/...; else file:line)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    info = embed_file(load_encoder(args.model, **merge_ratio_override(args)), args.input, args.out,
                      per_base=args.per_base, sequence_column=args.sequence_column, id_column=args.id_column,
                      progress=not args.no_progress, rc_average=args.rc_average, chunk_length=args.chunk_length,
                      chunk_overlap=args.chunk_overlap, batch_size=args.batch_size, precision=args.precision)
    shape = (info["bases"] if args.per_base else info["sequences"], info["dim"])
    print(f"embedded {info['sequences']} sequences ({info['bases']} bases) -> {info['out']} {shape}"
          + (f", ids in {info['ids']}" if info["ids"] else ""))
    return 0
