"""The demo: the whole tool end to end on the embedded real data, in minutes on a CPU.

:func:`run_demo` runs the steps of :func:`demo_steps` through the library and returns what each
produced. Every step is one ordinary subcommand: a :class:`DemoStep` carries the ``mergedna ...``
words that do the same (``mergedna demo`` prints them before each step, so a user can copy any of
them) and the library call it makes:

1. ``mergedna pretrain`` on the *E. coli* K-12 MG1655 genome (its last 100 kb held out);
2. ``mergedna finetune`` on the UCI splice-junction set (fixed stratified 80/10/10 split), from
   the pretrained checkpoint, then the same architecture from random initialisation with
   ``--baselines``: the Genomic Benchmarks CNN and a k-mer logistic regression trained on the
   same splits with the same seed (:mod:`mergedna.baselines`);
3. ``mergedna segment`` on a real E. coli region: the learned token boundaries and a PNG;
4. ``REPORT.md``: a table of test accuracy, MCC and macro-F1 for all four, with their wall time, and a
   closing text on what the numbers do and do not show.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .seqio import write_text_atomic

ECOLI_RECORD = "K-12-MG1655"
ECOLI_LENGTH = 4_639_675


def embedded(name: str) -> Path:
    """Path of a file shipped in ``mergedna/data/embedded`` (see PROVENANCE.md there)."""
    return Path(str(resources.files("mergedna") / "data" / "embedded" / name))


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


@dataclass
class DemoSettings:
    out: str = "mergedna-demo"
    preset: str = "tiny"  # model size
    pretrain_minutes: float = 3.0  # pretraining time budget
    pretrain_steps: int = 600  # pretraining steps if time allows
    window: int = 512  # pretraining window in bases
    epochs: float = 6.0  # fine-tuning epochs (UCI splice plateaus on dev by 3–6; keeps the demo under 10 min)
    lr: float = 1e-3  # fine-tuning peak learning rate
    seed: int = 0


@dataclass
class DemoStep:
    """One step: ``argv`` (the ``mergedna`` words that do the same) and what the library is called with."""

    name: str  # "pretrain", "finetune_pretrained", "finetune_scratch" or "segment"
    argv: list[str]
    call: dict = field(default_factory=dict)


def demo_steps(s: DemoSettings) -> list[DemoStep]:
    """The demo's steps for settings ``s``, in order."""
    from .training.trainer import TrainConfig

    out = Path(s.out)
    fasta, splice = str(embedded("Ecoli_K12_MG1655.fasta.gz")), str(embedded("splice.csv"))
    val = f"{ECOLI_RECORD}:{ECOLI_LENGTH - 100_000 + 1}-{ECOLI_LENGTH}"
    pre = out / "pretrain"
    train = TrainConfig(fasta=[fasta], val=val, preset=s.preset, window=s.window, batch_size=8, steps=s.pretrain_steps,
                        warmup=20, lr=2e-3, time_limit=s.pretrain_minutes, val_every=50, val_windows=16,
                        ckpt_every=100, log_every=5, seed=s.seed, out=str(pre), overwrite=True)
    steps = [DemoStep("pretrain", [
        "pretrain", "--fasta", fasta, "--val", val, "--preset", s.preset, "--window", str(s.window),
        "--batch-size", "8", "--steps", str(s.pretrain_steps), "--warmup", "20", "--lr", "2e-3",
        "--time-limit", str(s.pretrain_minutes), "--val-every", "50", "--val-windows", "16",
        "--ckpt-every", "100", "--log-every", "5", "--seed", str(s.seed), "--out", str(pre),
        "--overwrite"], {"config": train})]  # the demo's own folders: a second `make demo` starts them again
    common = ["--task", splice, "--layout", "csv", "--seed", str(s.seed), "--epochs", str(s.epochs),
              "--lr", str(s.lr), "--batch-size", "32", "--patience", "0", "--overwrite"]
    tuning = dict(task=splice, layout="csv", seed=s.seed, epochs=s.epochs, lr=s.lr, batch_size=32, patience=None,
                  overwrite=True)
    steps.append(DemoStep("finetune_pretrained",
                          ["finetune", "--model", str(pre / "model"), *common, "--out", str(out / "finetune_pretrained")],
                          {**tuning, "model": str(pre / "model"), "out": str(out / "finetune_pretrained")}))
    steps.append(DemoStep("finetune_scratch",
                          ["finetune", "--preset", s.preset, *common, "--baselines", "cnn", "kmer",
                           "--out", str(out / "finetune_scratch")],
                          {**tuning, "preset": s.preset, "baselines": ("cnn", "kmer"),
                           "out": str(out / "finetune_scratch")}))
    region = f"{ECOLI_RECORD}:190001-192000"
    steps.append(DemoStep("segment", ["segment", "--model", str(pre / "model"), "--fasta", fasta, "--region", region,
                                      "--show", "240", "--out", str(out / "segment")],
                          {"model": str(pre / "model"), "fasta": fasta, "regions": [region], "out": str(out / "segment"),
                           "show": 240}))
    return steps


def _run_step(step: DemoStep):
    if step.name == "pretrain":
        from .training.trainer import pretrain

        return pretrain(step.call["config"])
    if step.name.startswith("finetune"):
        from .finetune import finetune

        return finetune(command=shlex.join(["mergedna", *step.argv]), **step.call)
    from .embed import load_encoder
    from .segment import segment_to_dir

    c = step.call
    return segment_to_dir(load_encoder(c["model"]), c["fasta"], c["out"], c["regions"], progress=True)


def run_demo(settings: DemoSettings | None = None, before: Callable[[DemoStep], None] | None = None,
             after: Callable[[DemoStep, object], None] | None = None) -> dict:
    """Run every step of :func:`demo_steps` (``before(step)`` ahead of each, ``after(step, result)`` once it
    is done), then write ``REPORT.md``: the table of the four models and :func:`closing_text`. Returns
    ``results`` (step name -> what its library call returned), ``rows`` (the table's), ``report`` and
    ``minutes``."""
    s = settings or DemoSettings()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {}
    for step in demo_steps(s):
        if before is not None:
            before(step)
        results[step.name] = _run_step(step)
        if after is not None:
            after(step, results[step.name])
    scratch = results["finetune_scratch"]
    rows = {f"MergeDNA-{s.preset}, pretrained on E. coli": results["finetune_pretrained"],
            f"MergeDNA-{s.preset}, from scratch": scratch}
    for name in ("cnn", "kmer"):
        base = json.loads((out / "finetune_scratch" / "baselines" / f"{name}.json").read_text())
        rows[f"baseline: {base['label']}"] = {**base, "task": scratch["task"]}
    minutes = (time.time() - started) / 60
    report = (f"# MergeDNA demo\n\nUCI splice junctions (3 classes, 60 bp), fixed stratified 80/10/10 split "
              f"(split seed 0), training seed {s.seed}, test set evaluated once:\n\n{_metrics_table(rows)}\n\n"
              f"Total time {minutes:.1f} min.\n\n{closing_text(rows, s.preset, s.pretrain_minutes)}\n")
    write_text_atomic(out / "REPORT.md", report)
    return {"results": results, "rows": rows, "report": report, "minutes": minutes}
