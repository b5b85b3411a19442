"""``mergedna segment``: the learned token boundaries of FASTA records or regions
(:func:`mergedna.segment.segment_to_dir`), printed, and token length per annotated region type."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..segment import format_tokens, segment_fasta, segment_to_dir
from ._common import add_fasta_regions, add_precision, encoder_from_args, signature_defaults

DEFAULTS = signature_defaults(segment_fasta)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("segment", help="show the learned token boundaries of DNA; token length per "
                                              "annotated region type")
    add_fasta_regions(p, batch_default=DEFAULTS["batch_size"])
    ann = p.add_mutually_exclusive_group()
    ann.add_argument("--bed", help="BED annotation (0-based half-open)")
    ann.add_argument("--gff", help="GFF3 annotation (feature type = column 3)")
    p.add_argument("--bed-type-column", type=int, default=4,
                   help="1-based BED column holding the region type (default: %(default)s)")
    p.add_argument("--show", type=int, default=400,
                   help="print the tokens of the first SHOW bases of each record (default: %(default)s)")
    p.add_argument("--all", action="store_true", help="print every base")
    p.add_argument("--out", required=True, help="output directory")
    add_precision(p, DEFAULTS["precision"], "bf16 scores can move a boundary")
    p.set_defaults(func=run)
    return p


def print_segmentation(segs, config, show: int | None) -> None:
    """Each segmentation's header line and its tokens (``|`` between them), the first ``show`` bases or all."""
    for seg in segs:
        print(f">{seg.record} bases {seg.offset + 1}-{seg.offset + len(seg.ids)}: {len(seg.ids)} bases, "
              f"{len(seg.starts)} tokens, mean {len(seg.ids) / max(1, len(seg.starts)):.2f} bases/token "
              f"(merge_ratio {config.merge_ratio}, windows of {config.max_length})")
        print("\n".join(format_tokens(seg, show)))
        if show is not None and len(seg.ids) > show:
            print(f"... (first {show} bases; --all prints everything)")


def print_region_stats(stats: dict) -> None:
    print(f"\n{'region type':<20s}{'regions':>9s}{'bases':>10s}{'tokens':>9s}{'mean len':>10s}{'median len':>12s}")
    for kind, st in stats.items():
        mean = f"{st['mean_token_length']:.2f}" if st["tokens"] else "-"
        median = f"{st['median_token_length']:.1f}" if st["tokens"] else "-"
        print(f"{kind:<20s}{st['regions'] if st['regions'] is not None else '-':>9}{st['bases']:>10d}"
              f"{st['tokens']:>9d}{mean:>10s}{median:>12s}")


def run(args) -> int:
    encoder, note = encoder_from_args(args, "the boundaries reflect no training")
    if note:
        print(note)
    done = segment_to_dir(encoder, args.fasta, args.out, args.region, annotation=args.bed or args.gff,
                          annotation_format="bed" if args.bed else "gff", bed_type_column=args.bed_type_column,
                          batch_size=args.batch_size, progress=True, precision=args.precision)
    print_segmentation(done["segmentations"], done["config"], None if args.all else args.show)
    if done["stats"] is not None:
        print_region_stats(done["stats"])
    print(f"wrote {', '.join(str(Path(args.out) / w) for w in done['written'])}")
    return 0
