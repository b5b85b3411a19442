"""Summarise fine-tuning runs laid out as <root>/runs/<task...>/<arm>/seed<k>/metrics.json.

Prints markdown: per task, one row per arm with the best dev MCC and the test MCC / accuracy
(mean ± sd over seeds, × 100), steps, wall seconds and sequences/s; the arm with the best mean dev
MCC is marked (selection on dev; test is shown, never used to choose). Provenance of every run
(command, date, commit, machine) is listed below the tables.

    python scripts/summarise_runs.py results/position_heads > results/position_heads/README.md
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from mergedna.benchmark import pct_mean_sd


def main(root: str) -> None:
    root = Path(root)
    runs = defaultdict(lambda: defaultdict(list))
    for path in sorted((root / "runs").rglob("metrics.json")):
        rel = path.relative_to(root / "runs").parts  # (*task, arm, seedK, metrics.json)
        runs["/".join(rel[:-3])][rel[-3]].append(json.loads(path.read_text()))
    print(f"# {root.name}\n")
    print("Test metrics are shown but never used to choose: the marked arm (**) has the best mean dev MCC.\n")
    provenance = []
    for task, arms in runs.items():
        best = max(arms, key=lambda a: np.mean([m["best_dev"]["mcc"] for m in arms[a]]))
        print(f"## {task}\n")
        print("| arm | seeds | dev MCC (best) | test MCC | test accuracy | steps (best) | s/run | train seq/s |")
        print("|---|---|---|---|---|---|---|---|")
        for arm, ms in arms.items():
            mark = " **" if arm == best else ""
            rate = [m.get("sequences_per_s") for m in ms]
            rate = f"{np.mean(rate):.0f}" if None not in rate else "–"
            print(f"| {arm}{mark} | {len(ms)} | {pct_mean_sd([m['best_dev']['mcc'] for m in ms])} | "
                  f"{pct_mean_sd([m['test']['mcc'] for m in ms])} | {pct_mean_sd([m['test']['accuracy'] for m in ms])} | "
                  f"{int(np.mean([m['steps'] for m in ms]))} ({int(np.mean([m['best_step'] for m in ms]))}) | "
                  f"{np.mean([m['seconds'] for m in ms]):.0f} | {rate} |")
            for m in ms:
                mach = m["machine"]
                provenance.append(f"- {task} / {arm} / seed {m['seed']}: `{m['command']}`; {m['date']}; commit "
                                  f"{m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}; {mach['cpu']}, "
                                  f"{mach['cpus']} cores, {mach['torch_threads']} thread(s), torch {mach['torch']}")
        print()
    print("## Provenance\n")
    print("\n".join(provenance))


if __name__ == "__main__":
    main(sys.argv[1])
