"""Where the time of a pretraining step goes: ``torch.profiler`` over the suite's training step.

    python benchmarks/profile_step.py                          # small, N = 4096, batch 1
    python benchmarks/profile_step.py --preset base --mode inference
    python benchmarks/profile_step.py --preset tiny --mode finetune --length 100 --batch 32   # issue 14

Runs the same workload as ``benchmarks/suite.py`` (three passes, backward, clip, AdamW; or the
φ + ψ inference forward; or, with ``--mode finetune``/``finetune_eval``, the suite's fine-tuning
step or evaluation of a sequence classifier) under bf16 autocast (fp32 where the CPU lacks native bf16), after ``--warmup`` untimed steps, and profiles
``--steps`` steps. Prints and writes to ``benchmarks/results/profile_<preset>_<mode>_<N>_<precision>.md``:
the operators by self CPU time, and the same time summed into classes (matmul, attention,
elementwise, casts and copies, merge gathers/scatters/sorts, optimiser, other), the shares the
issue's optimisations are chosen from; and the operator dispatches and host reads per step, which bound a
step of a small model on a GPU (results/finetune_small_scratch_gpu).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402
from suite import base_windows, finetune_workloads, mergedna_workloads  # noqa: E402

from mergedna.provenance import run_metadata, write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {  # operator (after "aten::", leading underscores dropped) -> class; prefixes end in "*"
    "matmul": {"mm", "bmm", "addmm", "baddbmm", "linear", "matmul"},
    "attention (SDPA)": {"scaled_dot_product*"},
    "softmax (local windows)": {"softmax", "softmax_backward_data"},
    "optimiser": {"foreach*", "fused_adam*"},
    "merge (gather/scatter/sort)": {"gather", "scatter", "scatter_add", "scatter_add_", "sort", "argsort", "cumsum",
                                    "index", "index_select", "topk"},
    "casts and copies": {"copy_", "to_copy", "to", "clone", "contiguous", "cat", "pad", "constant_pad_nd", "fill_",
                         "zero_", "empty", "empty_strided", "new_zeros", "zeros", "ones", "full", "masked_fill",
                         "masked_fill_", "where"},
}


HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero"}  # .item()/.tolist() and boolean indexing: a GPU sync


def classify(name: str) -> str:
    if name.startswith("autograd::") or not name.startswith("aten::"):
        return "autograd and other bookkeeping"
    op = name.split("::")[-1].lstrip("_")
    for cls, names in CLASSES.items():
        if op in names or any(n.endswith("*") and op.startswith(n[:-1]) for n in names):
            return cls
    return "elementwise (norms, rotary, SwiGLU, ...)"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--mode", choices=("train", "inference", "finetune", "finetune_eval"), default="train")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--precision", choices=suite.PRECISIONS, default="auto",
                   help="bf16 autocast, fp32, or auto (default): bf16 where the CPU has AMX/AVX512-BF16")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite.PRECISION = suite.resolve(args.precision)
    ids, _ = base_windows(None, args.length, args.batch)
    if args.mode.startswith("finetune"):
        key = "train" if args.mode == "finetune" else "eval"
        fn = finetune_workloads(args.preset, ids)[f"ft_mergedna_{args.preset}_{key}"]
    else:
        workloads, _ = mergedna_workloads(args.preset, ids)
        fn = workloads[f"mergedna_{args.preset}_{args.mode}"]
    for _ in range(args.warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            fn()
    raw = prof.events()  # dispatches: aten operators that call no other (on a GPU, each that computes is a launch)
    leaves = sum(e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children)
                 for e in raw)
    reads = sum(e.name in HOST_READS for e in raw)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_class = defaultdict(float)
    for e in events:
        by_class[classify(e.key)] += e.self_cpu_time_total
    meta = run_metadata(shlex.join(["python", "benchmarks/profile_step.py", *(sys.argv[1:] if argv is None else argv)]))
    lines = [f"# Profile: {args.preset} {args.mode}, N = {args.length}, batch {args.batch}", "",
             f"- {meta['machine']['cpu']}, {args.threads} threads, torch {meta['machine']['torch']}, "
             f"{meta['date']}, commit {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''}",
             f"- command: `{meta['command']}`; {'bf16 autocast' if suite.PRECISION == 'bf16' else 'fp32'}; {args.steps} profiled steps after {args.warmup} warm-up",
             f"- self CPU time per step: {total / args.steps / 1e6:.3f} s",
             f"- per step: {leaves / args.steps:.0f} operator dispatches (aten operators calling no other; on a GPU "
             f"each that computes is a kernel launch, so at a few µs of host time each they bound a step of a small "
             f"model), {reads / args.steps:.0f} host reads of device values ({', '.join(sorted(HOST_READS))})", "",
             "| class | share |", "|---|---|"]
    for cls, t in sorted(by_class.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {cls} | {t / total:.1%} |")
    lines += ["", "| operator | calls/step | self ms/step | share | class |", "|---|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        lines.append(f"| `{e.key}` | {e.count // args.steps} | {e.self_cpu_time_total / args.steps / 1e3:.1f} | "
                     f"{e.self_cpu_time_total / total:.1%} | {classify(e.key)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out_dir) / f"profile_{args.preset}_{args.mode}_{args.length}_{suite.PRECISION}.md"
    write_text_atomic(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
