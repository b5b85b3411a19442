"""``mergedna finetune``: :func:`mergedna.finetune.finetune` on a labelled task, then its result printed.
:func:`add_training_arguments` (the model source and every :class:`~mergedna.finetune.FinetuneSettings`
field, defaults read from the dataclass) is shared with ``mergedna benchmark``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import POOLINGS, PRESETS
from ..data.task_batching import LENGTH_POLICIES
from ..data.tasks import LAYOUTS
from ..heads import HEAD_LR_RULES
from ..finetune import DEFAULT_LR, FLATTEN_MAX_LENGTH, METRICS, SWEEP_LRS, FinetuneSettings, finetune
from ._common import add_merge_ratio, add_option, add_precision, command_line, field_defaults

SETTINGS = field_defaults(FinetuneSettings)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("finetune", help="fine-tune a classifier on a labelled task, select on dev, "
                                               "evaluate once on test")
    p.add_argument("--task", required=True, help="task folder or file")
    p.add_argument("--layout", choices=["auto", *sorted(LAYOUTS)], default="auto",
                   help="task layout (default auto: a CSV/TSV or FASTA file, or a folder in GUE, Genomic "
                        "Benchmarks or NT layout, recognised from its files)")
    p.add_argument("--sequence-column", help="CSV/TSV sequence column, by name or 0-based index (default: "
                                             "sequence/seq/dna)")
    p.add_argument("--label-column", help="CSV/TSV label column, by name or 0-based index (default: label/class/...)")
    p.add_argument("--out", required=True, help="output folder (a new one, or one holding no run)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="--out holds another run: delete its files first")
    again.add_argument("--resume", action="store_true",
                       help="continue the unfinished run in --out from its last dev evaluation, exactly (same "
                            "settings required); a finished run is only printed")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--sweep", action="store_true",
                   help="train one model per lr x weight decay (x --sweep-lora-ranks x --sweep-poolings) and "
                        f"keep the best on dev; lr grid {SWEEP_LRS['pretrained']} from a checkpoint, {SWEEP_LRS['random']} from random init")
    p.add_argument("--sweep-lora-ranks", type=int, nargs="+", help="LoRA ranks to sweep (0 = full fine-tuning)")
    p.add_argument("--sweep-poolings", nargs="+", choices=POOLINGS, metavar="HEAD",
                   help=f"sequence heads to sweep, from {', '.join(POOLINGS)} (e.g. mean flatten: no head wins "
                        "on every task)")
    p.add_argument("--baselines", nargs="*", choices=("cnn", "kmer"), metavar="NAME",
                   help="also train references on the same splits and seed: cnn, kmer (no name: both)")
    add_training_arguments(p)
    p.set_defaults(func=run)
    return p


def add_training_arguments(p: argparse.ArgumentParser, source_required: bool = True) -> None:
    """Options shared by ``finetune`` and ``benchmark``: model source and :class:`FinetuneSettings`."""
    src = p.add_mutually_exclusive_group(required=source_required)
    src.add_argument("--model", help="checkpoint directory (save_pretrained); the head is new")
    src.add_argument("--preset", choices=sorted(PRESETS), help="random initialisation (the from-scratch baseline)")

    def a(flag, help=None, **kw):
        add_option(p, flag, SETTINGS, help, **kw)

    a("--lora-rank", "LoRA rank; 0 = full fine-tuning", type=int)
    a("--lora-alpha", "LoRA alpha (None: 2 x rank)", type=float)
    a("--lora-dropout", type=float)
    a("--lr", f"peak learning rate (None: {DEFAULT_LR['random']:g} from random init, {DEFAULT_LR['pretrained']:g} "
              "from a checkpoint; paper grid for pretrained models: 1e-5, 5e-5, 1e-4)", type=float)
    a("--weight-decay", "AdamW weight decay (paper: 0 or 0.01)", type=float)
    a("--batch-size", type=int)
    a("--eval-batch-size", "sequences per evaluation batch (None: 2 x batch size)", type=int)
    a("--epochs", type=float)
    a("--max-steps", "optimizer steps (wins over --epochs)", type=int)
    a("--max-time", "seconds of training and dev evaluation: the run ends (with a dev evaluation) when they are "
                    "spent, and warm-up and decay follow whichever of time and steps runs out first; the steps it "
                    "reached are recorded (they depend on the machine)", type=float)
    a("--warmup-ratio", "warm-up as a fraction of all steps", type=float)
    a("--warmup-steps", "warm-up steps (wins over --warmup-ratio)", type=int)
    a("--schedule", "decay after warm-up", choices=("linear", "cosine"))
    a("--eval-every", "steps between dev evaluations (None: ~10 per run)", type=int)
    a("--patience", "stop after this many dev evaluations without improvement (0 = never stop early)", type=int)
    a("--select-metric", "dev metric for selection", choices=METRICS)
    a("--clip", "gradient-norm clip (0 = off)", type=float)
    a("--ema", "evaluate on dev, select and keep an exponential moving average of the weights with this decay "
               "(e.g. 0.99: about the last 100 steps; warmed up over the first steps); 0 = off, the raw weights",
      type=float)
    a("--mlm-weight", "add this x a masked-modelling loss on each training batch's own sequences (decoders "
                      "trained alongside, not saved): a signal for a from-scratch encoder while the classifier "
                      "still sits at the class prior; 0 = off", type=float)
    a("--mlm-on-collapse", "with --mlm-weight 0: when two dev evaluations in a row predict a single class (the "
                           "model sits at the class prior), switch the auxiliary masked loss on at this weight from "
                           "the next step; 0 = never", type=float)
    a("--head-lr-scale", "lr of the flatten heads' wide layer: x sqrt(hidden/fan-in) (sqrt_fan_in), "
                         "x hidden/fan-in (fan_in) or the peak lr (none)", choices=HEAD_LR_RULES)
    add_precision(p, SETTINGS["precision"])
    a("--compile", "torch.compile each transformer block (1.25-1.6x on short sequences, measured in results/finetune_speed; ~40 s to compile)",
      action="store_true")
    a("--length-policy", "sequences longer than the model's max_length: error, truncate (centre) or chunk",
      choices=LENGTH_POLICIES)
    a("--max-length", "override the model's max_length", type=int)
    add_merge_ratio(p)
    a("--dropout", "residual dropout in every transformer block during training (None: the model's; 0 for the "
                   "presets and the paper's model); holds no weights, so it can be set on a checkpoint", type=float)
    a("--conv-stem", "from random init: a depthwise convolution of this odd width over the base embeddings before "
                     "the first block (0 = off, the paper's model; docs/method.md)", type=int)
    a("--pooling", "sequence head: mean (the paper's), max (each feature's largest value over tokens), cls (a CLS token that never merges), attention (with "
                   "absolute positions), flatten (per-base features flattened), mean_flatten (the sum of mean and flatten); auto: mean_flatten when all training "
                   f"sequences have one length <= {FLATTEN_MAX_LENGTH}, else cls", choices=("auto", *POOLINGS))
    a("--pool-bin", "flatten heads: the largest value of each channel over bins of this many bases, then flattened "
                    "(8 = the CNN baseline's three max-pools; 1 = every base its own slot); an error with any other head", type=int)
    a("--dev-fraction", "share carved for dev when needed", type=float)
    a("--split-seed", "seed of carved splits (fixed across seeds)", type=int)
    a("--train-on-dev", "train on dev when a task has no train split (result marked not comparable)",
      action="store_true")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda where there is one, else cpu); the "
                                    "baselines train on the CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args) -> dict:
    """:class:`FinetuneSettings` keyword arguments from parsed :func:`add_training_arguments` options."""
    names = {f.name for f in dataclasses.fields(FinetuneSettings)} - {"patience"}
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    kwargs["patience"] = args.patience or None
    return kwargs


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" if metrics[k] is not None else f"{k} n/a" for k in METRICS)


def finetune_kwargs(args) -> dict:
    """The keyword arguments of :func:`mergedna.finetune.finetune` for parsed ``finetune`` options."""
    columns = {k: int(v) if v.isdigit() else v for k, v in (("sequence_column", args.sequence_column),
                                                             ("label_column", args.label_column)) if v is not None}
    baselines = ["cnn", "kmer"] if args.baselines == [] else args.baselines or ()
    return dict(task=args.task, out=args.out, model=args.model, preset=args.preset, layout=args.layout,
                seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume,
                task_options=columns, device=args.device,
                baselines=tuple(baselines), sweep=args.sweep, sweep_lora_ranks=args.sweep_lora_ranks,
                sweep_poolings=args.sweep_poolings,
                **settings_from_args(args))


def print_result(result: dict) -> None:
    task = result["task"]
    print(f"task {task['name']}: train {task['sizes']['train']}, dev {task['sizes']['dev']}, "
          f"test {task['sizes']['test']} (dev: {task['dev_source']})")
    if not task["comparable"]:
        print(f"NOT COMPARABLE with published numbers: {task['reason']}")
    if "sweep" in result:
        for t in result["sweep"]["trials"]:
            print(f"  sweep lr {t['lr']:g} weight decay {t['weight_decay']:g} LoRA rank {t['lora_rank']}: "
                  f"best dev {result['sweep']['select_metric']} {t['best_dev'][result['sweep']['select_metric']]:.4f}")
        print(f"selected on dev: {result['sweep']['selected']}")
    resumed = f", resumed at step {result['resumed_at_step']}" if result.get("resumed_at_step") else ""
    print(f"best dev step {result['best_step']} of {result['steps']}"
          f"{' (stopped early)' if result['stopped_early'] else ''}{resumed}: {format_metrics(result['best_dev'])}")
    print(f"test (evaluated once): {format_metrics(result['test'])}  [{result['seconds']:.0f} s]")
    for warning in result.get("warnings", []):
        print(f"WARNING: {warning}")
    for name, r in result.get("baselines", {}).items():
        print(f"baseline {name} ({r['label']}), same splits, dev-selected: test {format_metrics(r['test'])}  "
              f"[{r['seconds']:.0f} s]")


def run(args) -> int:
    finished = args.resume and (Path(args.out) / "metrics.json").is_file()
    result = finetune(command=command_line(), **finetune_kwargs(args))
    print_result(result)
    print(f"{args.out} holds a finished run: nothing to resume (its metrics above)" if finished else
          f"wrote {args.out}/metrics.json, model/, dev_curve.png, test_predictions.tsv")
    return 0
