"""Table of scripts/finetune_tok15_gue.sh: test MCC x 100 per task for the three tok15 checkpoints,
`tiny` from scratch and the CNN and k-mer baselines (same splits and seeds), with the steps each
MergeDNA run took and a mark where it never left one class.

    python scripts/tok15_gue_report.py [results/finetune_tok15_gue]    (writes table.md there)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mergedna.benchmark import pct_mean_sd
from mergedna.seqio import write_text_atomic

ARMS = ("learned", "detached", "fixed", "scratch")
BASELINES = ("cnn", "kmer")


def main(root: Path) -> str:
    rows, meta = [], []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        results = {arm: json.loads((task_dir / arm / "results.json").read_text())
                   for arm in ARMS if (task_dir / arm / "results.json").exists()}
        if not results:
            continue
        task = next(iter(results.values()))["tasks"][0]
        cells = []
        for arm in ARMS:
            runs = results.get(arm, {}).get("runs", [])
            if not runs:
                cells.append("–")
                continue
            metrics = [json.loads((Path(r["dir"]) / "metrics.json").read_text()) for r in runs]
            steps = sorted({m["steps"] for m in metrics})
            stuck = sum(bool(m.get("warnings")) for m in metrics)
            note = "/".join(map(str, steps)) + " steps" + (f", {stuck}/{len(runs)} one class" if stuck else "")
            cells.append(f"{pct_mean_sd([r['test']['mcc'] for r in runs])} ({note})")
        for name in BASELINES:  # the same split and seed give the same reference: one per seed, from any arm
            by_seed = {}
            for r in results.values():
                for b in r.get("baseline_runs", {}).get(name, []):
                    by_seed.setdefault(b["seed"], b["test"]["mcc"])
            cells.append(pct_mean_sd(list(by_seed.values())))
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
        meta += [f"- {task} / {arm}: `{r['meta']['command']}`; {r['meta']['date']}; commit "
                 f"{r['meta']['git_commit'][:7]}{' (dirty)' if r['meta']['git_dirty'] else ''}"
                 for arm, r in results.items()]
    head = ("| task (test MCC × 100; mean ± sd where 3 seeds) | tok15 learned | tok15 detached | tok15 fixed | tiny from scratch | CNN | k-mer |\n"
            "|---|---|---|---|---|---|---|")
    text = head + "\n" + "\n".join(rows) + "\n\nProvenance:\n" + "\n".join(meta) + "\n"
    write_text_atomic(root / "table.md", text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/finetune_tok15_gue")))
