"""Is MergeDNA from scratch less sample-efficient than the CNN, or only slower per sequence?

For every finished MergeDNA run of the given benchmark folders (``mergedna benchmark --out``), trains the
Genomic Benchmarks CNN on the same split with the same seed for the same number of training sequences
(its steps capped: ceil(sequences seen / 64)), selects on dev within that budget, tests once, and puts it
beside the MergeDNA run and the CNN's full 10-epoch recipe (read from ``--full-cnn`` folders when given).

    python scripts/matched_budget.py --data ../shared/data/gue --out results/matched_budget \\
        results/finetune_small_scratch_mlm/tf_0 ... [--full-cnn results/finetune_small_scratch]

Writes ``results.json`` (every run, with its CNN record) and ``results.md`` (test MCC x 100, mean ± sd over
the seeds) under ``--out``, with the date, commit and machine of this invocation.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mergedna.baselines import CNNSettings, train_cnn
from mergedna.benchmark import SUITES, pct_mean_sd
from mergedna.data.tasks import load_task
from mergedna.finetune import FinetuneSettings, prepare_splits
from mergedna.provenance import run_metadata
from mergedna.seqio import write_json_atomic, write_text_atomic


def full_cnn(root: Path | None, task: str, seed: int) -> dict | None:
    """The full-recipe CNN record of ``task`` and ``seed`` under a benchmark folder of ``root``, if any."""
    if root is None:
        return None
    found = sorted(root.glob(f"*/runs/{task}/seed{seed}/baselines/cnn.json"))
    return json.loads(found[0].read_text()) if found else None


def matched_runs(bench: Path, data_root: Path, full_root: Path | None) -> list[dict]:
    results = json.loads((bench / "results.json").read_text())
    split_settings = {k: results["settings"][k] for k in ("dev_fraction", "split_seed", "train_on_dev")}
    rows, tasks = [], {}
    for run in results["runs"]:
        metrics = json.loads((Path(run["dir"]) / "metrics.json").read_text())
        if run["task"] not in tasks:
            task = load_task(data_root / run["task"], SUITES[results["suite"]]["layout"])
            tasks[run["task"]] = prepare_splits(task, FinetuneSettings(precision="fp32", **split_settings))[0], task
        splits, task = tasks[run["task"]]
        budget = math.ceil(metrics["sequences_seen"] / CNNSettings.batch_size)
        cnn = train_cnn(splits, task.num_classes, seed=run["seed"], settings=CNNSettings(max_steps=budget))
        full = full_cnn(full_root, run["task"], run["seed"])
        rows.append({"task": run["task"], "seed": run["seed"], "bench": str(bench),
                     "mergedna": {"steps": metrics["steps"], "sequences_seen": metrics["sequences_seen"],
                                  "epochs_done": metrics["epochs_done"], "test": metrics["test"],
                                  "best_dev": metrics["best_dev"], "train_seconds": metrics["train_seconds"],
                                  "preset": metrics["model"].get("preset"),
                                  "mlm_weight": metrics["settings"]["mlm_weight"]},
                     "cnn_matched": {k: cnn[k] for k in ("steps", "sequences_seen", "epochs_done", "test",
                                                          "best_dev", "train_seconds", "dev_curve")},
                     "cnn_full": None if full is None else {k: full[k] for k in ("steps", "test", "best_dev",
                                                                                 "train_seconds")}})
        print(f"{run['task']} seed {run['seed']}: MergeDNA {100 * metrics['test']['mcc']:.2f} "
              f"({metrics['sequences_seen']} sequences), CNN at that budget {100 * cnn['test']['mcc']:.2f}"
              + ("" if full is None else f", CNN full {100 * full['test']['mcc']:.2f}"), flush=True)
    return rows


def table(rows: list[dict], meta: dict) -> str:
    lines = ["# MergeDNA against the CNN at the same number of training sequences", "",
             f"`{meta['command']}`; {meta['date']}, commit {meta['git_commit']}"
             f"{' (dirty)' if meta['git_dirty'] else ''}; {meta['machine']['cpu']}, "
             f"{meta['machine']['torch_threads']} thread(s).", "",
             "Test MCC × 100, mean ± sd over seeds; each CNN run has the MergeDNA run's split and seed and is "
             "selected on dev within its budget. Sequences: training sequences seen (MergeDNA: steps × 32).", "",
             "| task | seeds | MergeDNA run | sequences (epochs) | MergeDNA | CNN, same sequences | CNN, 10 epochs |",
             "|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["bench"], r["task"]) for r in rows):
        group = [r for r in rows if (r["bench"], r["task"]) == key]
        m = group[0]["mergedna"]
        label = f"`{m['preset']}`, {m['steps']} steps" + (f", `--mlm-weight {m['mlm_weight']:g}`" if m["mlm_weight"] else "")
        full = [r["cnn_full"]["test"]["mcc"] for r in group if r["cnn_full"]]
        lines.append(f"| {key[1]} | {len(group)} | {label} | {m['sequences_seen']:,} ({m['epochs_done']:.2f}) | "
                     f"{pct_mean_sd([r['mergedna']['test']['mcc'] for r in group])} | "
                     f"{pct_mean_sd([r['cnn_matched']['test']['mcc'] for r in group])} | "
                     f"{pct_mean_sd(full) if len(full) == len(group) else '–'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench", nargs="+", type=Path, help="benchmark --out folders of MergeDNA runs")
    ap.add_argument("--data", type=Path, required=True, help="the suite's data root (e.g. ../shared/data/gue)")
    ap.add_argument("--full-cnn", type=Path, help="folder of benchmark folders holding the full-recipe CNN runs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    meta = run_metadata()
    rows = [row for bench in args.bench for row in matched_runs(bench, args.data, args.full_cnn)]
    write_json_atomic(args.out / "results.json", {"meta": meta, "runs": rows})
    write_text_atomic(args.out / "results.md", table(rows, meta))
    print(table(rows, meta))


if __name__ == "__main__":
    main()
