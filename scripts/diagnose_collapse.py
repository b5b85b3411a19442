"""Does a from-scratch classifier learn features, or collapse to the class prior?

Trains a randomly initialised MergeDNA classifier on random minibatches of a task's training split
(AdamW, linear warm-up, gradient clipping: the fine-tuning recipe without dev selection) and prints,
every ``--every`` steps, the running training loss and the spread of the pooled sequence vectors
across the batch (``pooled_sd``: standard deviation over sequences, averaged over features). A model
that learns keeps or grows that spread; a collapsing one shrinks it towards 0 while the loss sits at
the class prior (ln 2 for a balanced binary task). See results/finetune_small_scratch/diagnostic_collapse.

    python scripts/diagnose_collapse.py ../shared/data/gue/mouse/0 --lr 1e-3 --out probe.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mergedna.config import POOLINGS
from mergedna.config import preset as preset_config
from mergedna.data.task_batching import collate_labelled
from mergedna.data.tasks import load_task
from mergedna.finetune import FinetuneSettings, head_lr_scales
from mergedna.heads import HEAD_LR_RULES, SIZED_POOLINGS, MergeDNAForSequenceClassification
from mergedna.provenance import run_metadata
from mergedna.seqio import write_json_atomic
from mergedna.training.optim import adamw, lr_factor, param_groups


def probe(task: str, preset: str, pooling: str, lr: float, steps: int, batch_size: int, warmup: int,
          clip: float, seed: int, every: int, head_lr_scale: str = FinetuneSettings.head_lr_scale) -> list[dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    loaded = load_task(task)
    train = loaded.splits["train"] if "train" in loaded.splits else loaded.splits["all"]
    length = int(train.lengths.max())
    config = preset_config(preset, num_labels=loaded.num_classes, pooling=pooling, cls_token=pooling == "cls",
                    pool_length=length if pooling in SIZED_POOLINGS else None)
    model = MergeDNAForSequenceClassification(config).train()
    # the flatten layer's lr scaling, as `mergedna finetune --head-lr-scale` (heads.SequencePooler.lr_scales)
    optimizer = adamw(param_groups(model.named_parameters(), 0.01, lr, head_lr_scales(model, head_lr_scale)), lr=lr)
    # the same schedule mechanism as finetune: each group's own peak lr × the warm-up/decay factor
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, steps, "linear"))
    rows, losses, spreads, t0 = [], [], [], time.time()
    for step in range(1, steps + 1):
        batch = collate_labelled([train[int(i)] for i in rng.choice(len(train), batch_size, replace=False)])
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        spreads.append(out.pooled.detach().float().std(0).mean().item())
        if step % every == 0 or step == 1:
            rows.append({"step": step, "train_loss": float(np.mean(losses[-every:])),
                         "pooled_sd": float(np.mean(spreads[-every:])), "seconds": round(time.time() - t0, 1)})
            print(f"step {step:5d}  loss {rows[-1]['train_loss']:.4f}  pooled_sd {rows[-1]['pooled_sd']:.4f}",
                  flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", help="task folder or file (as mergedna finetune --task)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pooling", default="mean", choices=POOLINGS)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--head-lr-scale", default=FinetuneSettings.head_lr_scale, choices=HEAD_LR_RULES,
                   help="the flatten layer's lr rule, as mergedna finetune (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=50, help="steps per printed row (running means over them)")
    p.add_argument("--out", help="also write the rows and settings to this JSON file")
    args = p.parse_args()
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    rows = probe(**settings)
    if args.out:
        write_json_atomic(args.out, {"settings": settings, "rows": rows, **run_metadata()})


if __name__ == "__main__":
    main()
