"""``mergedna demo``: :func:`mergedna.demo.run_demo`, each step's equivalent ``mergedna ...`` command printed
before it runs and its outcome after, then the report."""

from __future__ import annotations

import argparse
import shlex

from ..config import PRESETS
from ..demo import DemoSettings, embedded, run_demo
from ..precision import resolve
from ._common import field_defaults
from .finetune import print_result
from .segment import print_segmentation

DEFAULTS = field_defaults(DemoSettings)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="end-to-end demo on the embedded E. coli genome and UCI splice data")
    p.add_argument("--out", default=DEFAULTS["out"], help="output folder (default: %(default)s)")
    p.add_argument("--preset", default=DEFAULTS["preset"], choices=sorted(PRESETS), help="model size (default: %(default)s)")
    p.add_argument("--pretrain-minutes", type=float, default=DEFAULTS["pretrain_minutes"],
                   help="pretraining time budget (default: %(default)s)")
    p.add_argument("--pretrain-steps", type=int, default=DEFAULTS["pretrain_steps"],
                   help="pretraining steps if time allows (default: %(default)s)")
    p.add_argument("--window", type=int, default=DEFAULTS["window"],
                   help="pretraining window in bases (default: %(default)s)")
    p.add_argument("--epochs", type=float, default=DEFAULTS["epochs"], help="fine-tuning epochs (default: %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="fine-tuning learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="(default: %(default)s)")
    p.set_defaults(func=run)
    return p


def before(step) -> None:
    print(f"\n$ mergedna {shlex.join(step.argv)}", flush=True)


def after(step, result) -> None:
    if step.name == "pretrain":
        print(f"done: {result['steps_done']} steps ({result['stopped_by']}); model in {step.call['config'].out}/model")
    elif step.name.startswith("finetune"):
        print_result(result)
    else:
        print_segmentation(result["segmentations"], result["config"], step.call["show"])


def run(args) -> int:
    settings = DemoSettings(**{k: getattr(args, k) for k in DEFAULTS})
    print(f"MergeDNA demo -> {settings.out}/  (embedded data: {embedded('Ecoli_K12_MG1655.fasta.gz')}, "
          f"{embedded('splice.csv')})")
    print("precision: bf16 autocast (auto: bf16 runs faster than fp32 on this CPU)" if resolve("auto") == "bf16" else
          "precision: fp32 (auto: bf16 autocast would not be faster on this CPU)")
    done = run_demo(settings, before, after)
    print("\n" + done["report"])
    print(f"Everything is in {settings.out}/: pretrain/ (model, metrics.jsonl, curves.png), finetune_pretrained/, "
          f"finetune_scratch/ (with baselines/), segment/ (tokens.tsv, PNG), REPORT.md")
    return 0
