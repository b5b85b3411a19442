"""Issue 14's bar as a table: MergeDNA runs beside the CNN and k-mer baselines of the same splits and seeds.

For each benchmark folder given (``mergedna benchmark --out``; its ``runs/<task>/seed<k>/metrics.json``), and
each task in it: MergeDNA's test MCC (mean ± sd over its seeds), its budget (epochs, steps, best-on-dev step),
device and precision, then the Genomic Benchmarks CNN and the k-mer model on the same seeds, read from the
``baselines/{cnn,kmer}.json`` records under ``--baselines`` (any benchmark folders below it), and the gap
to the CNN with whether it is within the bar's 3 MCC points. Per-seed rows follow, then every run's
provenance (command, date, commit, machine).

    python scripts/bar_report.py --baselines results/finetune_small_scratch \\
        results/finetune_small_scratch_gpu/concurrent12 results/finetune_small_scratch_gpu/prom_300_tata_concurrent3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mergedna.benchmark import pct_mean_sd

BAR = 3.0  # MCC points (× 100) within the CNN's mean


def baseline(root: Path, task: str, seed: int, name: str) -> dict | None:
    found = sorted(root.rglob(f"runs/{task}/seed{seed}/baselines/{name}.json"))
    return json.loads(found[0].read_text()) if found else None


def report(folders: list[Path], baselines: Path) -> str:
    lines = ["| runs | task | seeds | MergeDNA test MCC | epochs (steps) | CNN, same seeds | k-mer | MergeDNA − CNN | "
             "within 3? |", "|---|---|---|---|---|---|---|---|---|"]
    seeds_rows, provenance = [], []
    for folder in folders:
        by_task: dict[str, list[dict]] = {}
        for path in sorted(folder.glob("runs/**/metrics.json")):
            metrics = json.loads(path.read_text())
            task = "/".join(path.relative_to(folder / "runs").parts[:-2])
            by_task.setdefault(task, []).append(metrics)
        for task, runs in by_task.items():
            runs.sort(key=lambda m: m["seed"])
            mcc = [m["test"]["mcc"] for m in runs]
            refs = {n: [baseline(baselines, task, m["seed"], n) for m in runs] for n in ("cnn", "kmer")}
            cnn = [r["test"]["mcc"] for r in refs["cnn"] if r]
            kmer = [r["test"]["mcc"] for r in refs["kmer"] if r]
            gap = 100 * (np.mean(mcc) - np.mean(cnn)) if len(cnn) == len(runs) else None
            verdict = "–" if gap is None or len(runs) < 3 else ("yes" if gap >= -BAR else "no")
            lines.append(
                f"| {folder.name} | {task} | {len(runs)} | {pct_mean_sd(mcc)} | "
                f"{np.mean([m['epochs_done'] for m in runs]):.1f} ({np.mean([m['steps'] for m in runs]):.0f}) | "
                f"{pct_mean_sd(cnn) if len(cnn) == len(runs) else '–'} | "
                f"{pct_mean_sd(kmer) if len(kmer) == len(runs) else '–'} | "
                f"{'–' if gap is None else f'{gap:+.2f}'} | {verdict} |")
            for m in runs:
                curve = ", ".join(f"{100 * row['dev']['mcc']:.1f}" for row in m["dev_curve"])
                seeds_rows.append(
                    f"| {folder.name} | {task} | {m['seed']} | {100 * m['test']['mcc']:.2f} | "
                    f"{100 * m['best_dev']['mcc']:.2f} at {m['best_step']} of {m['steps']} | {curve} | "
                    f"{m.get('device', 'cpu')}, {m.get('precision', m['settings']['precision'])} | "
                    f"{m['sequences_per_s']:.0f} |")
                provenance.append(f"- {folder.name} {task} seed {m['seed']}: `{m['command']}`; {m['date']}, commit "
                                  f"{m['git_commit'][:10]}{' (dirty)' if m.get('git_dirty') else ''}, "
                                  f"{m['machine'].get('cuda') or m['machine']['cpu']}, torch {m['machine']['torch']}")
    return "\n".join([
        *lines, "",
        "| runs | task | seed | test MCC | best dev MCC at step | dev MCC at each evaluation | device, precision | "
        "train seq/s |", "|---|---|---|---|---|---|---|---|", *seeds_rows, "",
        f"Baselines from {baselines} (same splits and seeds, dev-only selection, CPU).", "", *provenance, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="benchmark output folders of MergeDNA runs")
    parser.add_argument("--baselines", type=Path, required=True, help="folder holding benchmark folders with "
                                                                      "baselines/cnn.json and kmer.json")
    args = parser.parse_args()
    print(report(args.folders, args.baselines))


if __name__ == "__main__":
    main()
