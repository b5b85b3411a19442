"""``mergedna score-variants`` and ``mergedna eval-variants``: thin commands over :mod:`mergedna.variants`."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .cli_args import add_model_source
from .precision import PRECISIONS, resolve
from .provenance import run_metadata, write_json_atomic, write_text_atomic
from .variants import (EDGES, MASKS, evaluate, load_scoring_model, markdown_table, random_scoring_model, read_scores,
                       score_variants, write_scores)


def _command() -> str:
    return shlex.join(["mergedna", *sys.argv[1:]])


def cmd_score_variants(args) -> int:
    if args.model:
        model, source = load_scoring_model(args.model), {"checkpoint": str(Path(args.model).resolve())}
    else:
        model, source = random_scoring_model(args.preset, args.seed), {"preset": args.preset, "seed": args.seed}
        print(f"note: preset {args.preset!r} with random weights (seed {args.seed}): an untrained floor")
    scores = score_variants(model, args.fasta, args.vcf, window=args.window, rc_average=args.rc_average,
                            edge=args.edge, mask=args.mask, skip_ref_mismatch=args.skip_ref_mismatch, skip_outside=args.skip_outside,
                            batch_size=args.batch_size, precision=resolve(args.precision), progress=not args.no_progress)
    write_scores(scores, args.out)
    s = scores.summary
    write_json_atomic(f"{args.out}.json", {"model": source, "summary": s, "meta": run_metadata(_command())})
    skipped = ", ".join(f"{n} {k}" for k, n in s["skipped"].items()) or "none"
    rate = f"{s['variants_per_s']:.1f}" if s["variants_per_s"] else "n/a"
    print(f"scored {s['scored']} SNVs of {s['records']} records at {s['positions']} positions "
          f"({s['forwards']} windows of {s['context_bases']} bases, {'both strands' if s['rc_average'] else 'forward strand'}) "
          f"in {s['seconds']:.1f} s: {rate} variants/s; skipped: {skipped}; wrote {args.out} and {args.out}.json")
    return 0


def _group_as(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--group-as expects NAME=VALUE[,VALUE...], got {item!r}")
        out[name] = values.split(",")
    return out


def cmd_eval_variants(args) -> int:
    names = args.names or [Path(p).stem for p in args.scores]
    if len(names) != len(args.scores) or len(set(names)) != len(names):
        raise ValueError("--names needs one distinct name per --scores file")
    tables = {name: read_scores(path) for name, path in zip(names, args.scores)}
    result = evaluate(tables, args.label, args.positive, args.predictors or [], args.group, _group_as(args.group_as),
                      args.group_rest, args.bootstrap, args.seed)
    runs = {}
    for name, path in zip(names, args.scores):
        side = Path(f"{path}.json")
        runs[name] = json.loads(side.read_text()) if side.is_file() else None
    result.update(scores={n: str(Path(p).resolve()) for n, p in zip(names, args.scores)}, score_runs=runs,
                  meta=run_metadata(_command()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", result)
    table = markdown_table(result)
    m = result["meta"]
    lines = [f"# Zero-shot variant effects: AUROC, {args.label} in {{{', '.join(args.positive)}}} vs the rest", "",
             f"Score sources: the models' −LLR (lower log P(ALT) − log P(REF) = more damaging) and INFO "
             f"predictors ({', '.join(args.predictors or []) or 'none'}). 95% intervals: stratified bootstrap, "
             f"{args.bootstrap} resamples, seed {args.seed}. Column n = positives + negatives with a model score; "
             f"INFO predictors leave out rows where they are missing.", "", table]
    for name, run in runs.items():
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
    write_text_atomic(out / "results.md", "\n".join(lines) + "\n")
    print(table, end="")
    print(f"wrote {out / 'metrics.json'} and {out / 'results.md'}")
    return 0


def add_parser(subparsers) -> None:
    """Register ``mergedna score-variants`` and ``mergedna eval-variants``."""
    p = subparsers.add_parser("score-variants", help="zero-shot SNV scores (log P(ALT) - log P(REF), the variant's "
                                                     "token masked) for a VCF",
                              description="Score every SNV of a VCF by the pretraining model's log-likelihood ratio "
                                          "at the variant, its token masked (docs/variant_scoring.md).")
    add_model_source(p, model_help="pretraining checkpoint directory (with decoders and base head)", preset_help="random weights: the untrained floor")
    p.add_argument("--fasta", required=True, help="reference FASTA (plain, gzip or bgzip); records may be "
                                                  "regions named chrom:start-end")
    p.add_argument("--vcf", required=True, help="VCF (plain, gzip or bgzip)")
    p.add_argument("--out", required=True, help="scores TSV; a JSON summary is written beside it (OUT.json)")
    p.add_argument("--window", type=int, help="context bases around the variant (default: the model's max_length; "
                                              "the variant and (window-1)//2 bases each side)")
    p.add_argument("--rc-average", action="store_true", help="average the score over both strands")
    p.add_argument("--edge", choices=EDGES, default="shift",
                   help="a window running off a record end: shift it inside (default) or pad with N")
    p.add_argument("--mask", choices=MASKS, default="token",
                   help="what is masked: the token holding the variant (default, as the paper's AMTM) or its base "
                        "alone (the masked input then holds nothing of REF)")
    p.add_argument("--skip-ref-mismatch", action="store_true",
                   help="count and skip variants whose REF differs from the FASTA (default: error)")
    p.add_argument("--skip-outside", action="store_true",
                   help="count and skip variants whose CHROM or position the FASTA does not hold (default: error)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default: bf16 logits are too coarse, ~0.004, to rank close variants apart), "
                        "bf16 autocast, or auto (bf16 where the CPU has AMX/AVX512-BF16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score_variants)

    e = subparsers.add_parser("eval-variants", help="AUROC of score-variants scores for an INFO class, overall "
                                                    "and by group, beside INFO predictors")
    e.add_argument("--scores", nargs="+", required=True, help="TSVs written by score-variants (same VCF)")
    e.add_argument("--names", nargs="+", help="one name per scores file (default: file stems)")
    e.add_argument("--label", required=True, help="INFO column holding the class (e.g. CLASS)")
    e.add_argument("--positive", nargs="+", required=True, help="class value(s) counted positive (e.g. LOF)")
    e.add_argument("--predictors", nargs="+", help="INFO columns scored beside the models; NAME:low when lower "
                                                   "means positive")
    e.add_argument("--group", help="INFO column to split by (e.g. CSQ)")
    e.add_argument("--group-as", action="append", metavar="NAME=V1,V2",
                   help="a named group of --group values (repeatable); other values go to --group-rest")
    e.add_argument("--group-rest", default="other", help="name of the group of values no --group-as lists")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% interval (0 = none)")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--out", required=True, help="output directory: metrics.json, results.md")
    e.set_defaults(func=cmd_eval_variants)
