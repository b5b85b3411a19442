"""Model throughput: bp/s of forward and forward+backward per preset and sequence length.

    python benchmarks/bench_model.py                       # tiny small base paper x 1k 4k 16k
    python benchmarks/bench_model.py --presets small --lengths 4096 --batch 2

One pass of the full pretraining model (φ ψ ω ζ and the base head, the MTR pass) on real
chr20 sequence from the test fixture (random bases past its 6 kb), under bf16 autocast where the
CPU multiplies bf16 natively (AMX/AVX512-BF16), else fp32; `--precision bf16|fp32` forces either.
"forward" is inference (no_grad); "forward+backward" adds the backward of the base
cross-entropy; "pretrain-step" is the whole three-pass objective (MTR, latent MTR, AMTM at
ratio 0.5) and its backward, optionally with ``--activation-checkpointing``. Each configuration runs in a fresh subprocess, so its peak RSS is its own;
one untimed warm-up call, then the median of ``--repeats`` timed calls. A configuration
that runs out of memory or time is recorded as such. Rows are appended to
``benchmarks/results/<tag>.jsonl`` (default tag ``model_throughput``); ``<tag>.md`` shows the
latest measurement of every configuration in that file, each with its date and commit, with machine, date, commit and command.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def real_bases(n: int, batch: int) -> torch.Tensor:
    """(batch, n) ids: the chr20 fixture, then uniformly random bases once it runs out."""
    from mergedna.vocab import encode

    text = "".join(line.strip() for line in (ROOT / "tests" / "fixtures" / "chr20_slice.fa").read_text().splitlines()
                   if not line.startswith(">"))
    ids = torch.from_numpy(encode(text[2000:]).astype("int64"))  # skip the leading N run
    g = torch.Generator().manual_seed(0)
    out = torch.randint(0, 4, (batch, n), generator=g)
    k = min(n, ids.numel())
    out[:, :k] = ids[:k]
    return out


def measure(preset: str, n: int, batch: int, mode: str, repeats: int, bf16: bool, checkpointing: bool) -> dict:
    """Time one configuration in this process."""
    from mergedna.config import preset as make_preset
    from mergedna.model import MergeDNAForPretraining
    from mergedna.objectives import MergeDNAPretrainer, ObjectiveConfig, step_generator
    from mergedna.training.trainer import apply_block_options

    torch.manual_seed(0)
    model = MergeDNAForPretraining(make_preset(preset))
    apply_block_options(model, activation_checkpointing=checkpointing)
    objective = MergeDNAPretrainer(model, ObjectiveConfig())
    ids = real_bases(n, batch)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if mode == "forward":
                with torch.no_grad():
                    model(ids)
                return
            if mode == "pretrain-step":
                loss = objective(ids, step_generator(0, 0), ratio=0.5)["loss"]
            else:
                loss = model(ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"seconds": sec, "bp_per_s": batch * n / sec, "times": times,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_isolated(args, preset: str, n: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", preset, str(n), mode, "--batch", str(args.batch),
           "--repeats", str(args.repeats)] + ["--precision", "bf16" if args.bf16 else "fp32"] + (
        ["--activation-checkpointing"] if args.activation_checkpointing else [])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {args.timeout} s"}
    if res.returncode != 0:
        killed = res.returncode < 0 or "MemoryError" in res.stderr or "out of memory" in res.stderr.lower()
        return {"status": "out of memory" if killed else f"failed: {res.stderr.strip().splitlines()[-1:]}"}
    return {"status": "ok", **json.loads(res.stdout.strip().splitlines()[-1])}


def markdown(rows: list[dict]) -> str:
    """The latest row per configuration, each with its own date and commit; commands listed below."""
    m = rows[-1]["machine"]
    lines = [f"# Model throughput (bf16 autocast: {rows[-1]['bf16']})", "",
             f"- machine: {m['cpu']}, {m['cpus']} cores, torch {m['torch']}, {m['torch_threads']} threads"]
    lines += [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in rows)]

    def stamp(r):
        return f"{r['date'][:10]} {(r['git_commit'] or '?')[:7]}{'+' if r['git_dirty'] else ''}"

    steps = [r for r in rows if r["mode"] == "pretrain-step"]
    passes = [r for r in rows if r["mode"] != "pretrain-step"]
    keyed = {(r["preset"], r["length"], r["mode"]): r for r in passes}
    if passes:
        lines += ["", "One MTR pass of the full model (commit `+` = uncommitted edits present):", "",
                  "| preset | N (bp) | batch | forward bp/s | forward+backward bp/s | peak RSS fwd+bwd (GB) | date, commit |",
                  "|---|---|---|---|---|---|---|"]
    for (preset, n) in dict.fromkeys((r["preset"], r["length"]) for r in passes):
        cells = []
        for mode in ("forward", "forward+backward"):
            r = keyed.get((preset, n, mode), {"status": "not run"})
            cells.append(f"{r['bp_per_s']:,.0f}" if r.get("status") == "ok" else r["status"])
        fb = keyed.get((preset, n, "forward+backward"), {})
        rss = f"{fb['peak_rss_gb']:.1f}" if fb.get("status") == "ok" else "-"
        any_row = keyed.get((preset, n, "forward+backward")) or keyed.get((preset, n, "forward"))
        lines.append(f"| {preset} | {n:,} | {any_row['batch']} | {cells[0]} | {cells[1]} | {rss} | {stamp(any_row)} |")
    if steps:
        lines += ["", "Three-pass pretraining step (forward + backward, no optimizer):", "",
                  "| preset | N (bp) | batch | activation checkpointing | bp/s | peak RSS (GB) | date, commit |",
                  "|---|---|---|---|---|---|---|"]
        for r in steps:
            ok = r.get("status") == "ok"
            speed = f"{r['bp_per_s']:,.0f}" if ok else r["status"]
            rss = f"{r['peak_rss_gb']:.1f}" if ok else "-"
            lines.append(f"| {r['preset']} | {r['length']:,} | {r['batch']} | "
                         f"{r.get('activation_checkpointing', False)} | {speed} | {rss} | {stamp(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from mergedna.precision import PRECISIONS, resolve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "base", "paper"])
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    p.add_argument("--modes", nargs="+", default=["forward", "forward+backward"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast precision: auto (bf16 where the CPU has AMX/AVX512-BF16, else fp32), bf16 or fp32")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per configuration")
    p.add_argument("--tag", default="model_throughput", help="results file stem under benchmarks/results/")
    p.add_argument("--child", nargs=3, metavar=("PRESET", "N", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.bf16 = resolve(args.precision) == "bf16"
    if args.child:
        preset, n, mode = args.child
        print(json.dumps(measure(preset, int(n), args.batch, mode, args.repeats, args.bf16,
                                 args.activation_checkpointing)))
        return

    from mergedna.provenance import run_metadata

    meta = run_metadata(shlex.join(["python", "benchmarks/bench_model.py", *sys.argv[1:]]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        for n in args.lengths:
            for mode in args.modes:
                row = {"bench": "model", "preset": preset, "length": n, "batch": args.batch, "mode": mode,
                       "bf16": args.bf16, "activation_checkpointing": args.activation_checkpointing,
                       **run_isolated(args, preset, n, mode), **meta}
                rows.append(row)
                shown = f"{row['bp_per_s']:>12,.0f} bp/s" if row["status"] == "ok" else row["status"]
                print(f"{preset:>6} N={n:>6} {mode:<17} {shown}", flush=True)
                with open(RESULTS / f"{args.tag}.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    # the table keeps the latest measurement of every configuration ever run, each with its commit
    every = [json.loads(x) for x in (RESULTS / f"{args.tag}.jsonl").read_text().splitlines() if x.strip()]
    latest = {(r["preset"], r["length"], r["mode"], r["batch"], r.get("activation_checkpointing", False)): r
              for r in every}
    table = markdown(list(latest.values()))
    (RESULTS / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
