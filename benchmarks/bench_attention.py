"""Full attention on a CPU: SDPA against the same softmax attention as two batched matmuls.

    python benchmarks/bench_attention.py --out-dir benchmarks/results

Forward + backward (training) and the no-grad forward (inference) of ``mergedna.attention.full_attention`` with ``explicit=False`` (SDPA) and
``explicit=True``, at the shapes of ``small`` fine-tuning (batch 32, 4 heads of 64; n tokens, a padded
key in every row so the mask is used), fp32 and bf16. The two forms alternate inside each round, so
load on a shared machine falls on both; the median of ``--rounds`` is reported. The table decides
``mergedna.attention.EXPLICIT_MAX_TOKENS``; a machine where the crossover sits elsewhere shows it here.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

from mergedna.attention import explicit_in_training, full_attention
from mergedna.provenance import run_metadata, write_text_atomic


def one_call(n: int, dtype: torch.dtype, explicit: bool, train: bool, batch: int, heads: int, head_dim: int
             ) -> float:
    q, k, v = (torch.randn(batch, heads, n, head_dim, dtype=dtype, requires_grad=train) for _ in range(3))
    bias = torch.zeros(batch, n)
    bias[:, -1] = float("-inf")
    start = time.perf_counter()
    with torch.set_grad_enabled(train):
        out = full_attention(q, k, v, bias, explicit=explicit)
    if train:
        out.float().sum().backward()
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[25, 50, 100, 150, 300, 600])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = run_metadata()
    rows = []
    for train, dtype, n in itertools.product((True, False), (torch.float32, torch.bfloat16), args.lengths):
        times = {False: [], True: []}
        for r in range(args.rounds + 1):  # round 0 warms up
            for explicit in (False, True):
                t = one_call(n, dtype, explicit, train, args.batch, args.heads, args.head_dim)
                if r:
                    times[explicit].append(t)
        sdpa, expl = (statistics.median(times[e]) * 1e3 for e in (False, True))
        chosen = "explicit" if train and explicit_in_training(n, dtype, "cpu") else "SDPA"
        rows.append(f"| {'training' if train else 'inference'} | {str(dtype).removeprefix('torch.')} | {n} | "
                    f"{sdpa:.2f} | {expl:.2f} | {sdpa / expl:.2f} | {chosen} |")
        print(rows[-1], flush=True)
    m = meta["machine"]
    text = "\n".join([
        "# Full attention on a CPU: SDPA against explicit matmuls (forward + backward)", "",
        f"- machine: {m['cpu']}, {m['cpus']} cores, torch {m['torch']}, {args.threads} thread(s); "
        f"bf16 native: {m['cpu_bf16_native']}, bf16 matmul / fp32 (probe): {m['cpu_bf16_speedup']}",
        f"- date {meta['date']}, commit {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''}",
        f"- command: `{meta['command']}`",
        f"- batch {args.batch}, {args.heads} heads of {args.head_dim}, median of {args.rounds} alternating rounds",
        "",
        "| pass | dtype | tokens | SDPA ms | explicit ms | SDPA / explicit | `full_attention` uses |",
        "|---|---|---|---|---|---|---|", *rows, ""])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "attention_cpu.md"
    write_text_atomic(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
