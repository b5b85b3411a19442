"""``mergedna score-variants``: zero-shot SNV scores of a VCF (:func:`mergedna.variants.score_variants`),
written as TSV with a JSON summary beside it; defaults are :func:`~mergedna.variants.score_variants`'s."""

from __future__ import annotations

from pathlib import Path

from ..precision import resolve
from ..provenance import run_metadata, write_json_atomic
from ..variants import EDGES, MASKS, load_scoring_model, random_scoring_model, score_variants, write_scores
from ._common import add_model_source, add_precision, command_line, signature_defaults

DEFAULTS = signature_defaults(score_variants)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("score-variants", help="zero-shot SNV scores (log P(ALT) - log P(REF), the variant's "
                                                     "token masked) for a VCF",
                              description="Score every SNV of a VCF by the pretraining model's log-likelihood ratio "
                                          "at the variant, its token masked (docs/variant_scoring.md).")
    add_model_source(p, model_help="pretraining checkpoint directory (with decoders and base head)",
                     preset_help="random weights: the untrained floor")
    p.add_argument("--fasta", required=True, help="reference FASTA (plain, gzip or bgzip); records may be "
                                                  "regions named chrom:start-end")
    p.add_argument("--vcf", required=True, help="VCF (plain, gzip or bgzip)")
    p.add_argument("--out", required=True, help="scores TSV; a JSON summary is written beside it (OUT.json)")
    p.add_argument("--window", type=int, help="context bases around the variant (default: the model's max_length; "
                                              "the variant and (window-1)//2 bases each side)")
    p.add_argument("--rc-average", action="store_true", help="average the score over both strands")
    p.add_argument("--edge", choices=EDGES, default=DEFAULTS["edge"],
                   help="a window running off a record end: shift it inside or pad with N (default: %(default)s)")
    p.add_argument("--mask", choices=MASKS, default=DEFAULTS["mask"],
                   help="what is masked: the token holding the variant (as the paper's AMTM) or its base alone (the "
                        "masked input then holds nothing of REF) (default: %(default)s)")
    p.add_argument("--skip-ref-mismatch", action="store_true",
                   help="count and skip variants whose REF differs from the FASTA (default: error)")
    p.add_argument("--skip-outside", action="store_true",
                   help="count and skip variants whose CHROM or position the FASTA does not hold (default: error)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                   help="windows per forward pass (default: %(default)s)")
    add_precision(p, DEFAULTS["precision"], "bf16 logits are too coarse (~0.004) to rank close variants apart")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.model:
        model, source = load_scoring_model(args.model), {"checkpoint": str(Path(args.model).resolve())}
    else:
        model, source = random_scoring_model(args.preset, args.seed), {"preset": args.preset, "seed": args.seed}
        print(f"note: preset {args.preset!r} with random weights (seed {args.seed}): an untrained floor")
    scores = score_variants(model, args.fasta, args.vcf, window=args.window, rc_average=args.rc_average,
                            edge=args.edge, mask=args.mask, skip_ref_mismatch=args.skip_ref_mismatch,
                            skip_outside=args.skip_outside,                             batch_size=args.batch_size, precision=resolve(args.precision), progress=not args.no_progress)
    write_scores(scores, args.out)
    s = scores.summary
    write_json_atomic(f"{args.out}.json", {"model": source, "summary": s, "meta": run_metadata(command_line())})
    skipped = ", ".join(f"{n} {k}" for k, n in s["skipped"].items()) or "none"
    rate = f"{s['variants_per_s']:.1f}" if s["variants_per_s"] else "n/a"
    print(f"scored {s['scored']} SNVs of {s['records']} records at {s['positions']} positions "
          f"({s['forwards']} windows of {s['context_bases']} bases, {'both strands' if s['rc_average'] else 'forward strand'}) "
          f"in {s['seconds']:.1f} s: {rate} variants/s; skipped: {skipped}; wrote {args.out} and {args.out}.json")
    return 0
