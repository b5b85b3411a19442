"""Before/after of an optimisation: the suite's MergeDNA workloads at two code versions, side by side.

    python benchmarks/ab_commits.py --before 544c911 --label "heads-first attention"
    python benchmarks/ab_commits.py --before HEAD~1 --after HEAD --presets small base --modes train inference
    python benchmarks/ab_commits.py --before 22bd609 --label "fine-tuning" --modes ft_train ft_eval \
        --length 100 --batch 32 --threads 1

Each version is checked out into a temporary ``git worktree`` (``--after`` defaults to the working
tree as it is, uncommitted edits included). The workload code is this checkout's
``benchmarks/suite.py`` (the same for both); only the ``mergedna`` package it imports differs.
Every measurement is a fresh subprocess (``--warmup`` untimed steps, then ``--steps`` timed,
median kept) and the two versions alternate for ``--rounds`` rounds, so drift on a shared
machine hits both alike; the reported speed-up is the median over rounds of after/before bp/s.
One row per (preset, mode) is appended to ``optimisations.jsonl`` in ``--out-dir`` (default
``benchmarks/results``) and ``optimisations.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHILD = """
import json, statistics, sys, time, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
import suite
from suite import base_windows, finetune_workloads, mergedna_workloads
import mergedna
assert mergedna.__file__.startswith({src!r}), mergedna.__file__
ids, _ = base_windows(None, {length}, {batch})
if {mode!r}.startswith("ft_"):  # fine-tuning step / evaluation, each version at its own default precision
    key = "ft_mergedna_{preset}_" + {mode!r}[3:] + ("_compiled" if {compile} else "")
    fn, info = finetune_workloads({preset!r}, ids, compile={compile})[key], {{key: {{"flops": None}}}}
else:
    workloads, info = mergedna_workloads({preset!r}, ids)
    key = "mergedna_{preset}_{mode}"
    fn = workloads[key]
for _ in range({warmup}):
    fn()
times = []
for _ in range({steps}):
    t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
print(json.dumps({{"seconds": statistics.median(times), "times": times, "flops": info[key]["flops"],
                  "precision": suite.PRECISION}}))
"""


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def measure(src: Path, args, preset: str, mode: str, compile: bool = False) -> dict:
    code = CHILD.format(bench=str(ROOT / "benchmarks"), src=str(src), threads=args.threads, length=args.length,
                        batch=args.batch, preset=preset, mode=mode, warmup=args.warmup, steps=args.steps,
                        compile=compile)
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"measurement at {src} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    lines = ["# Optimisations, before and after", "",
             "Each row: `benchmarks/ab_commits.py`, the two versions measured alternately in fresh subprocesses "
             "on the same machine in one run; speed-up = median over rounds of after / before bp/s; precision = what "
             "each version's default resolved to (rows before it was recorded: bf16 autocast).",
             "", "| optimisation | preset | mode | N × batch | before bp/s | after bp/s | speed-up | rounds | "
             "precision | before → after | date | machine |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['preset']} | {r['mode']} | {r['length']} × {r['batch']} | "
                     f"{r['before_bp_per_s']:,.0f} | {r['after_bp_per_s']:,.0f} | {r['speedup']:.3f} | {r['rounds']} | "
                     f"{r.get('before_precision', 'bf16')} → {r.get('after_precision', 'bf16')} | "
                     f"`{r['before'][:9]}` → `{r['after'][:9]}` | {r['date'][:10]} | "
                     f"{r['machine']}, {r['threads']} threads |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="git revision of the 'before' code")
    p.add_argument("--after", default=None, help="git revision of the 'after' code (default: the working tree)")
    p.add_argument("--label", required=True, help="what changed, for the results table")
    p.add_argument("--presets", nargs="+", default=["small"])
    p.add_argument("--modes", nargs="+", choices=("train", "inference", "ft_train", "ft_eval"), default=["train"],
                   help="pretraining step / inference, or the fine-tuning step / evaluation of a classifier "
                        "(ft_*: each version with its own default head and precision)")
    p.add_argument("--after-compile", action="store_true",
                   help="ft_* modes: the 'after' classifier's blocks under torch.compile (finetune --compile)")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from mergedna.provenance import run_metadata, write_text_atomic

    meta = run_metadata(shlex.join(["python", "benchmarks/ab_commits.py", *(sys.argv[1:] if argv is None else argv)]))
    with tempfile.TemporaryDirectory(prefix="mergedna-ab-") as tmp:
        trees = {}
        for side, rev in (("before", args.before), ("after", args.after)):
            if rev is None:
                trees[side] = (ROOT / "src", git("rev-parse", "HEAD") + ("+dirty" if meta["git_dirty"] else ""))
                continue
            path = Path(tmp) / side
            git("worktree", "add", "--detach", str(path), rev)
            trees[side] = (path / "src", git("rev-parse", rev))
        try:
            new_rows = []
            for preset in args.presets:
                for mode in args.modes:
                    runs = {"before": [], "after": []}
                    for i in range(args.rounds):
                        for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                            runs[side].append(measure(trees[side][0], args, preset, mode,
                                                      compile=side == "after" and args.after_compile))
                    bp = {s: [args.batch * args.length / r["seconds"] for r in runs[s]] for s in runs}
                    row = {"label": args.label, "preset": preset, "mode": mode + ("+compile" if args.after_compile
                                                                                    else ""),
                           "length": args.length,
                           "batch": args.batch, "rounds": args.rounds, "threads": args.threads,
                           "before": trees["before"][1], "after": trees["after"][1],
                           "before_bp_per_s": statistics.median(bp["before"]),
                           "after_bp_per_s": statistics.median(bp["after"]),
                           "speedup": statistics.median(a / b for a, b in zip(bp["after"], bp["before"])),
                           "before_precision": runs["before"][0].get("precision"),
                           "after_precision": runs["after"][0].get("precision"),
                           "before_runs": runs["before"], "after_runs": runs["after"],
                           "date": meta["date"], "machine": meta["machine"]["cpu"], "command": meta["command"],
                           "torch": meta["machine"]["torch"]}
                    new_rows.append(row)
                    print(f"{preset} {mode}: before {row['before_bp_per_s']:,.0f} bp/s, after "
                          f"{row['after_bp_per_s']:,.0f} bp/s, speed-up {row['speedup']:.3f}", flush=True)
        finally:
            for side, rev in (("before", args.before), ("after", args.after)):
                if rev is not None:
                    git("worktree", "remove", "--force", str(Path(tmp) / side))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = out / "optimisations.jsonl"
    with open(history, "a") as fh:
        for row in new_rows:
            fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    write_text_atomic(out / "optimisations.md", markdown(rows))
    print(f"appended to {history}, wrote {out / 'optimisations.md'}")


if __name__ == "__main__":
    main()
