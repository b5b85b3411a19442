"""Which k-mer orders carry a task's signal? The k-mer baseline (mergedna.baselines.train_kmer: frequencies,
logistic regression, C chosen on dev) fitted with one k at a time, k = 1 ... 6, test evaluated once per k.

A task whose negatives keep the positives' base and dinucleotide make-up (shuffled sequences) shows MCC ~ 0 at
k = 1 and 2: whatever an encoder averages over bases without their order cannot separate it. Issue 14 used it to
read GUE mouse/0 (results/mouse_0_arms).

    PYTHONPATH=src python scripts/kmer_order_probe.py ../shared/data/gue/mouse/0 [more task dirs] > out.md
"""

from __future__ import annotations

import argparse
import shlex
import sys

from mergedna.baselines import KmerSettings, train_kmer
from mergedna.data.tasks import load_task
from mergedna.finetune import FinetuneSettings, prepare_splits
from mergedna.provenance import run_metadata


def probe(task_dir: str, ks=(1, 2, 3, 4, 5, 6), seed: int = 0) -> list[dict]:
    task = load_task(task_dir)
    splits, _ = prepare_splits(task, FinetuneSettings())
    rows = []
    for k in ks:
        result = train_kmer(splits, task.num_classes, seed, KmerSettings(ks=(k,)))
        rows.append({"k": k, "C": result["selected"]["C"], "dev": result["best_dev"]["mcc"],
                     "test": result["test"]["mcc"], "seconds": result["seconds"]})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="+", help="task directories (train/dev/test csv)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    meta = run_metadata("PYTHONPATH=src python " + shlex.join(["scripts/kmer_order_probe.py", *sys.argv[1:]]))
    print("# k-mer order probe: logistic regression on k-mer frequencies, one k at a time\n")
    print(f"- command: `{meta['command']}`\n- {meta['date']}, commit {meta['git_commit']}"
          f"{' (dirty)' if meta['git_dirty'] else ''}, {meta['machine']['cpu']}, seed {args.seed}\n"
          "- C from (0.01, 0.1, 1) on dev for each k; test evaluated once per k; MCC x 100\n")
    print("| task | k | C | dev MCC | test MCC |\n|---|---|---|---|---|")
    for task_dir in args.tasks:
        for r in probe(task_dir, seed=args.seed):
            print(f"| {task_dir} | {r['k']} | {r['C']:g} | {100 * r['dev']:.2f} | {100 * r['test']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
