"""``mergedna demo``: the whole tool end to end on the embedded real data, in minutes on a CPU.

The demo is a walk through ordinary subcommands, each printed before it runs, so a user
can copy any step:

1. ``mergedna pretrain`` on the *E. coli* K-12 MG1655 genome (its last 100 kb held out);
2. ``mergedna finetune`` on the UCI splice-junction set (fixed stratified 80/10/10 split), from
   the pretrained checkpoint, then the same architecture from random initialisation with
   ``--baselines``: the Genomic Benchmarks CNN and a k-mer logistic regression trained on the
   same splits with the same seed (:mod:`mergedna.baselines`);
3. a table of test accuracy, MCC and macro-F1 for all four, with their wall time, and a closing
   text on what the numbers do and do not show;
4. ``mergedna segment`` on a real E. coli region: the learned token boundaries and a PNG.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from importlib import resources
from pathlib import Path

from .config import PRESETS
from .precision import resolve
from .seqio import write_text_atomic

ECOLI_RECORD = "K-12-MG1655"
ECOLI_LENGTH = 4_639_675


def embedded(name: str) -> Path:
    """Path of a file shipped in ``mergedna/data/embedded`` (see PROVENANCE.md there)."""
    return Path(str(resources.files("mergedna") / "data" / "embedded" / name))


def _run(argv: list[str]) -> None:
    from .cli import main

    print(f"\n$ mergedna {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise SystemExit(f"mergedna demo: step 'mergedna {argv[0]}' failed with exit code {code}")


def _metrics_table(rows: dict[str, dict]) -> str:
    lines = ["| model | test accuracy | test MCC | test macro-F1 | best dev MCC | training | wall time |",
             "|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        t = m["test"]
        if "steps" in m and "baseline" not in m:
            training = f"{m['steps']} steps"
        elif m.get("baseline") == "cnn":
            training = f"{m['epochs']} epochs, best {m['best_epoch']}"
        else:
            training = f"k={m['selected']['k']}, C={m['selected']['C']:g} (dev grid)"
        lines.append(f"| {name} | {t['accuracy']:.4f} | {t['mcc']:.4f} | {t['f1']:.4f} | "
                     f"{m['best_dev']['mcc']:.4f} | {training} | {m['seconds']:.0f} s |")
    return "\n".join(lines)


def closing_text(rows: dict[str, dict], preset: str, pretrain_minutes: float) -> str:
    """What the table shows and what it does not, in words computed from the numbers."""
    mcc = {k: v["test"]["mcc"] for k, v in rows.items()}
    names = list(rows)
    pre, scratch, cnn, kmer = (mcc[n] for n in names)
    best = max(mcc, key=mcc.get)
    gap = cnn - max(pre, scratch)
    lines = [
        "What these numbers show:",
        f"- The best test MCC here is {best} ({mcc[best]:.3f}).",
        f"- Pretraining for {pretrain_minutes:g} minutes on E. coli moved MergeDNA-{preset} from MCC "
        f"{scratch:.3f} (random init) to {pre:.3f}: {'a gain' if pre > scratch else 'no gain'} of "
        f"{pre - scratch:+.3f} with the same fine-tuning recipe, splits and seed.",
        f"- The supervised CNN, trained only on these {rows[names[0]]['task']['sizes']['train']} labelled "
        f"sequences in seconds, is {'ahead of' if gap > 0 else 'behind'} the better MergeDNA row by "
        f"{abs(gap):.3f} MCC. The k-mer model ({kmer:.3f}) counts k-mers anywhere in the sequence; it "
        "cannot see where a motif sits, which is what splice junctions are about.",
        "What they do not show:",
        f"- One seed and a {rows[names[0]]['task']['sizes']['test']}-sequence test set: differences of a few "
        "MCC points are within seed noise.",
        f"- A {preset} model pretrained for minutes on one bacterial genome is not the paper's 380M model "
        "pretrained on many genomes; nothing here measures how MergeDNA performs at that scale.",
        "- UCI splice is one small, 60-bp task; it says little about other tasks or longer sequences.",
    ]
    return "\n".join(lines)


def cmd_demo(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fasta, splice = str(embedded("Ecoli_K12_MG1655.fasta.gz")), str(embedded("splice.csv"))
    started = time.time()
    print(f"MergeDNA demo -> {out}/  (embedded data: {fasta}, {splice})")
    print("precision: bf16 autocast (this CPU multiplies bf16 natively)" if resolve("auto") == "bf16" else
          "precision: fp32 (this CPU has no AMX/AVX512-BF16, where bf16 autocast would be far slower)")
    val = f"{ECOLI_RECORD}:{ECOLI_LENGTH - 100_000 + 1}-{ECOLI_LENGTH}"
    _run(["pretrain", "--fasta", fasta, "--val", val, "--preset", args.preset, "--window", str(args.window),
          "--batch-size", "8", "--steps", str(args.pretrain_steps), "--warmup", "20", "--lr", "2e-3",
          "--time-limit", str(args.pretrain_minutes), "--val-every", "50", "--val-windows", "16",
          "--ckpt-every", "100", "--log-every", "5", "--seed", str(args.seed), "--out", str(out / "pretrain"),
          "--overwrite"])  # the demo's own folders: a second `make demo` starts them again
    common = ["--task", splice, "--layout", "csv", "--seed", str(args.seed), "--epochs", str(args.epochs),
              "--lr", str(args.lr), "--batch-size", "32", "--patience", "0", "--overwrite"]
    _run(["finetune", "--model", str(out / "pretrain" / "model"), *common, "--out", str(out / "finetune_pretrained")])
    _run(["finetune", "--preset", args.preset, *common, "--baselines", "cnn", "kmer",
          "--out", str(out / "finetune_scratch")])
    scratch = json.loads((out / "finetune_scratch" / "metrics.json").read_text())
    rows = {f"MergeDNA-{args.preset}, pretrained on E. coli":
            json.loads((out / "finetune_pretrained" / "metrics.json").read_text()),
            f"MergeDNA-{args.preset}, from scratch": scratch}
    for name in ("cnn", "kmer"):
        base = json.loads((out / "finetune_scratch" / "baselines" / f"{name}.json").read_text())
        rows[f"baseline: {base['label']}"] = {**base, "task": scratch["task"]}
    table = _metrics_table(rows)
    closing = closing_text(rows, args.preset, args.pretrain_minutes)
    _run(["segment", "--model", str(out / "pretrain" / "model"), "--fasta", fasta,
          "--region", f"{ECOLI_RECORD}:190001-192000", "--show", "240", "--out", str(out / "segment")])
    minutes = (time.time() - started) / 60
    report = (f"# MergeDNA demo\n\nUCI splice junctions (3 classes, 60 bp), fixed stratified 80/10/10 split "
              f"(split seed 0), training seed {args.seed}, test set evaluated once:\n\n{table}\n\n"
              f"Total time {minutes:.1f} min.\n\n{closing}\n")
    write_text_atomic(out / "REPORT.md", report)
    print("\n" + report)
    print(f"Everything is in {out}/: pretrain/ (model, metrics.jsonl, curves.png), finetune_pretrained/, "
          f"finetune_scratch/ (with baselines/), segment/ (tokens.tsv, PNG), REPORT.md")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="end-to-end demo on the embedded E. coli genome and UCI splice data")
    p.add_argument("--out", default="mergedna-demo", help="output folder (default mergedna-demo)")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size (default tiny)")
    p.add_argument("--pretrain-minutes", type=float, default=3.0, help="pretraining time budget (default 3)")
    p.add_argument("--pretrain-steps", type=int, default=600, help="pretraining steps if time allows")
    p.add_argument("--window", type=int, default=512, help="pretraining window in bases (default 512)")
    p.add_argument("--epochs", type=float, default=10.0, help="fine-tuning epochs (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return p
