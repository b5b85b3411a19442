"""Issue 15's experiment report: validation losses, tokenizer diagnostics and the region table of the three
arms trained by scripts/tok15_experiment.sh, with the untrained, run-length and fixed-span baselines beside them.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/tok15_report.py [--runs runs/tok15] [--out results/tok15]

Runs `mergedna tokenizer-stats` on 1 Mb of the held-out region for each arm and `scripts/token_regions.py`
on all three, then writes results/tok15/{README.md, summary.json} (and copies each arm's metrics.jsonl,
run_config.json and curves.png), with date, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mergedna.provenance import run_metadata, write_json_atomic, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ARMS = {"learned": "(a) learned merge, relaxed degrees", "detached": "(b) same, no gradient into the grouping",
        "fixed": "(c) fixed spans of 2"}
VAL_KEYS = [("mtr", "MTR"), ("latent_mtr", "latent MTR"), ("amtm", "AMTM, all masked"),
            ("amtm_interior", "AMTM, interior bases"), ("amtm_edge", "AMTM, edge bases"), ("amtm_acc", "AMTM accuracy"),
            ("loss", "total")]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/tok15")
    p.add_argument("--out", default="results/tok15")
    p.add_argument("--region", default="20:50000001-51000000", help="held-out region for tokenizer-stats")
    p.add_argument("--skip-stats", action="store_true", help="reuse the stats and region files already written")
    args = p.parse_args()
    runs, out = REPO / args.runs, REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    summary: dict = {"meta": run_metadata(), "command": shlex.join(sys.argv), "arms": {}}
    for arm in ARMS:
        d = runs / arm
        metrics = rows(d / "metrics.jsonl")
        val = [r for r in metrics if r.get("split") == "val"]
        train = [r for r in metrics if r.get("split") == "train"]
        cfg = json.loads((d / "run_config.json").read_text())
        summary["arms"][arm] = {"val_last": val[-1] if val else None, "val_first": val[0] if val else None,
                                "steps": train[-1]["step"] if train else 0,
                                "minutes": train[-1]["elapsed_s"] / 60 if train else 0.0,
                                "train_commit": cfg["meta"].get("git_commit"), "run_config": cfg}
        for name in ("metrics.jsonl", "run_config.json", "curves.png", "summary.json"):
            if (d / name).exists():
                (out / arm).mkdir(exist_ok=True)
                shutil.copy(d / name, out / arm / name)
        stats = out / arm / "tokenizer_stats.json"
        if not args.skip_stats:
            run([py, "-m", "mergedna.cli", "tokenizer-stats", "--model", str(d / "model"), "--fasta",
                 str(DATA / "genomes" / "GRCh37_chr20.fa.gz"), "--region", args.region, "--window",
                 str(cfg["train"]["window"]), "--batch-size", "32", "--out", str(stats)])
        summary["arms"][arm]["tokenizer"] = json.loads(stats.read_text())["tokenizers"]
    if not args.skip_stats:
        run([py, "scripts/token_regions.py", *[a for arm in ARMS for a in ("--model", f"{arm}={runs / arm / 'model'}")],
             "--window", str(summary["arms"]["learned"]["run_config"]["train"]["window"]), "--name",
             f"{out.name}/regions", "--results-dir", str(out.parent)])
    regions_md = (out / "regions" / "regions.md").read_text() if (out / "regions" / "regions.md").exists() else ""
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "README.md", report(summary, regions_md))
    print((out / "README.md").read_text())
    return 0


def fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def report(s: dict, regions_md: str) -> str:
    arms = s["arms"]
    meta = s["meta"]
    m = meta.get("machine", {})
    lines = ["# Issue 15: does the tokenizer learn? Three arms on chr20", "",
             f"Report: `{s['command']}` ({meta.get('date')}, commit {meta.get('git_commit', '?')[:7]}, "
             f"{m.get('cpu')}, {m.get('cpus')} cores, torch {m.get('torch')}). Training: "
             "`bash scripts/tok15_experiment.sh` (commit of each run below), `tiny` preset (0.6M parameters), "
             "GRCh37 chr20 with 20:50,000,000-60,000,000 held out, windows of 512 bp, batch 4, lr 1e-3, seed 0, "
             "one seed per arm; the three arms ran side by side, one thread each, under the same wall-clock "
             "limit, so each had about the same share of the (shared, busy) 2-core machine.", "",
             "## Validation (held-out windows, ratio 0.5, last validation of each run; nats per base)", "",
             "| | " + " | ".join(ARMS[a] for a in arms) + " |", "|---|" + "---|" * len(arms)]
    lines.append("| steps (minutes) | " + " | ".join(f"{arms[a]['steps']} ({arms[a]['minutes']:.0f})" for a in arms)
                 + " |")
    lines.append("| training commit | " + " | ".join(str(arms[a]["train_commit"])[:7] for a in arms) + " |")
    for key, label in VAL_KEYS:
        lines.append(f"| {label} | " + " | ".join(fmt((arms[a]["val_last"] or {}).get(key)) for a in arms) + " |")
    lines += ["", "Chance for a base is ln 4 = 1.386 nats. Edge bases: masked bases with a visible neighbour.", "",
              "## Tokenizer diagnostics (1 Mb of the held-out region; docs/tokenizer_diagnostics.md)", "",
              "| arm | tokenizer | bases/token | P(equal \\| boundary) | P(equal \\| within) | boundary F1 vs arm |",
              "|---|---|---|---|---|---|"]
    for a in arms:
        for name, t in arms[a]["tokenizer"].items():
            f1 = t.get("f1_vs_model")
            lines.append(f"| {a} | {name} | {t['mean_token_length']:.3f} | {fmt(t['p_equal_at_boundary'])} | "
                         f"{fmt(t['p_equal_within'])} | {'–' if f1 is None else f'{f1:.3f}'} |")
    lines += ["", "## Token length by region class", "", regions_md.strip(), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
