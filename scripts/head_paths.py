"""Which path of a `mean_flatten` head does a fine-tuned classifier use? (issue 14)

For each run folder (a `finetune` output with `model/`), evaluates dev MCC with the head as trained, with its
flatten path switched off (the mean over bases alone: composition) and with its mean path switched off (the
flattened per-base features alone: position), the average norm of each path's output on dev,
and the tokens the encoder made (per sequence, the share of single bases, the longest). A run that
learned a position-dependent signal (a TATA box at a fixed offset) loses most without the flatten path.

    PYTHONPATH=src python scripts/head_paths.py --task ../shared/data/gue/prom/prom_300_tata RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

import mergedna.heads as heads
from mergedna.data.task_batching import make_dataloader
from mergedna.data.tasks import load_task
from mergedna.finetune import evaluate
from mergedna.heads import MergeDNAForSequenceClassification
from mergedna.precision import autocast, resolve


@contextlib.contextmanager
def path_off(model, which: str | None):
    """Switch one path of the mean_flatten head off: "flatten" (its output layer returns 0) or "mean"
    (the size-weighted mean over bases returns 0); None: the head as trained."""
    pooler, real_pool = model.pooler, heads.pool_bases
    real_out = pooler.out.forward
    if which == "flatten":
        pooler.out.forward = lambda x: torch.zeros(*x.shape[:-1], pooler.out.out_features, dtype=x.dtype,
                                                   device=x.device)
    elif which == "mean":
        heads.pool_bases = lambda z, sizes, mask: torch.zeros(z.shape[0], z.shape[-1], device=z.device)
    try:
        yield
    finally:
        pooler.out.forward, heads.pool_bases = real_out, real_pool


@torch.no_grad()
def head_inputs(model, loader, precision: str) -> dict:
    """With the head as trained, over the split: the mean norm of each head path's output, and the tokens the
    encoder's merging made (tokens per sequence, the share of single-base tokens, the longest token in bases)."""
    norms, sizes, counts = {"mean": [], "flatten": []}, [], []
    for batch in loader:
        with autocast(precision, torch.device("cpu")):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            enc = out.encoder
            mean = heads.pool_bases(enc.last_hidden_state, enc.token_sizes, enc.token_mask).float()
        norms["mean"].append(mean.norm(dim=-1))
        norms["flatten"].append((out.pooled.float() - mean).norm(dim=-1))
        sizes.append(enc.token_sizes[enc.token_mask.bool()])
        counts.append(enc.token_mask.sum(1).float())
    sizes = torch.cat(sizes)
    return {**{k: float(torch.cat(v).mean()) for k, v in norms.items()},
            "tokens": float(torch.cat(counts).mean()), "single": float((sizes == 1).float().mean()),
            "longest": int(sizes.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="the task folder the runs were fine-tuned on")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    split = load_task(args.task).splits[args.split]
    loader = make_dataloader(split, 64, 1024, shuffle=False)
    precision = resolve(args.precision)
    print(f"| run | {args.split} MCC as trained | flatten path off (mean only) | mean path off (flatten only) "
          "| mean-path norm | flatten-path norm | tokens per sequence | single-base tokens | longest token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        model = MergeDNAForSequenceClassification.from_pretrained(Path(run) / "model").eval()
        if model.pooler.kind != "mean_flatten":
            raise SystemExit(f"{run}: head is {model.pooler.kind!r}, not mean_flatten")
        mcc = {}
        for which in (None, "flatten", "mean"):  # the dev metric fine-tuning recorded (mergedna.finetune.evaluate)
            with path_off(model, which):
                mcc[which] = evaluate(model, loader, split, precision, args.split)["mcc"]
        stats = head_inputs(model, loader, precision)
        print(f"| {run} | {100 * mcc[None]:.2f} | {100 * mcc['flatten']:.2f} | {100 * mcc['mean']:.2f} "
              f"| {stats['mean']:.2f} | {stats['flatten']:.2f} | {stats['tokens']:.1f} | {100 * stats['single']:.1f}% "
              f"| {stats['longest']} |")


if __name__ == "__main__":
    main()
