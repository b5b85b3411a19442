"""``mergedna benchmark``: :func:`mergedna.benchmark.run_benchmark` over a suite's tasks × seeds, each
finished run reported as it lands, then the summary table."""

from __future__ import annotations

import argparse

from ..baselines import BASELINES
from ..benchmark import SUITES, markdown_table, run_benchmark
from ._common import command_line, signature_defaults
from .finetune import add_training_arguments, settings_from_args

DEFAULTS = signature_defaults(run_benchmark)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("benchmark", help="fine-tune tasks x seeds and tabulate mean ± sd next to the "
                                                "published MergeDNA numbers")
    p.add_argument("--suite", choices=sorted(SUITES), default="gue", help="(default: %(default)s)")
    p.add_argument("--data-root", required=True,
                   help="folder holding the suite's task folders (e.g. ../shared/data/gue)")
    p.add_argument("--tasks", nargs="+", help="task folders (files for --suite csv) relative to --data-root "
                                              "(default: all folders with a train split)")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"], help="number of seeds per task (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=DEFAULTS["first_seed"], help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory (rerunning skips finished runs)")
    p.add_argument("--save-models", action="store_true", help="keep every run's fine-tuned checkpoint")
    p.add_argument("--baselines", nargs="*", choices=BASELINES, default=None,
                   help="also train these references on the same splits and seeds (default: cnn kmer; "
                        "--baselines with no name: none). Without --model/--preset: a baselines-only table")
    add_training_arguments(p, source_required=False)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    baselines = list(BASELINES) if args.baselines is None else args.baselines
    if args.model is None and args.preset is None and not baselines:
        raise SystemExit("mergedna benchmark: give --model or --preset, or at least one baseline")

    def report(record, skipped):
        metric = SUITES[args.suite]["metric"]
        who = f" {record['baseline']}" if "baseline" in record else ""
        print(f"{record['task']} seed {record['seed']}{who}: test {metric} {record['test'][metric]:.4f}"
              f"{' (done before, reused)' if skipped else ''}", flush=True)

    results = run_benchmark(args.suite, args.data_root, args.out, args.tasks, args.seeds, args.first_seed,
                            model=args.model, preset=args.preset, command=command_line(),
                            progress=not args.no_progress, save_models=args.save_models, on_run=report,
                            baselines=baselines, device=args.device, **settings_from_args(args))
    print()
    print(markdown_table(results))
    print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return 0
