"""``mergedna eval-variants``: AUROC of ``score-variants`` scores for an INFO class, overall and by group,
beside INFO predictors (:func:`mergedna.variants.evaluate`), as ``metrics.json`` and ``results.md``."""

from __future__ import annotations

from ..variants import evaluate_files, markdown_table, write_evaluation
from ._common import command_line, signature_defaults

DEFAULTS = signature_defaults(evaluate_files)


def add_parser(subparsers) -> None:
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
    e.add_argument("--group-rest", default=DEFAULTS["group_rest"],
                   help="name of the group of values no --group-as lists (default: %(default)s)")
    e.add_argument("--bootstrap", type=int, default=DEFAULTS["n_boot"],
                   help="bootstrap resamples for the 95%% interval (0 = none; default: %(default)s)")
    e.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="bootstrap seed (default: %(default)s)")
    e.add_argument("--out", required=True, help="output directory: metrics.json, results.md")
    e.set_defaults(func=run)


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


def run(args) -> int:
    result = evaluate_files(args.scores, args.label, args.positive, args.names, args.predictors or [], args.group,
                            _group_as(args.group_as), args.group_rest, args.bootstrap, args.seed, command_line())
    written = write_evaluation(result, args.out)
    print(markdown_table(result), end="")
    print(f"wrote {written[0]} and {written[1]}")
    return 0
