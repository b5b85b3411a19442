"""``mergedna eval-variants``: AUROC of ``score-variants`` scores for an INFO class, overall and by group,
beside INFO predictors (:func:`mergedna.variants.evaluate`), as ``metrics.json`` and ``results.md``."""

from __future__ import annotations

import json
from pathlib import Path

from ..provenance import run_metadata, write_json_atomic, write_text_atomic
from ..variants import evaluate, markdown_table, read_scores
from ._common import command_line, signature_defaults

DEFAULTS = signature_defaults(evaluate)


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
                  meta=run_metadata(command_line()))
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
