"""Optimiser and learning-rate schedule shared by pretraining and fine-tuning (issues 10, 14).

* :func:`param_groups`: AdamW groups; matrices decay, norms, biases and embeddings do not.
* :func:`adamw`: AdamW with the fused kernel where it applies.
* :func:`lr_factor`: the multiplier of the peak learning rate at a step: linear warm-up, then
  linear or cosine decay to a floor (``min_ratio`` of the peak).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")


def param_groups(named_parameters, weight_decay: float, lr: float | None = None,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups of the trainable parameters: matrices (decayed) and the rest (norm scales,
    biases, embeddings; not decayed). ``lr_scales`` maps parameter names to a multiple of the peak
    ``lr``; each such parameter gets a group of its own with that learning rate."""
    decay, rest, scaled = [], [], []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        decays = p.ndim >= 2 and "embed" not in name
        if lr_scales and name in lr_scales:
            if lr is None:
                raise ValueError("lr_scales need the peak lr")
            scaled.append({"params": [p], "weight_decay": weight_decay if decays else 0.0,
                           "lr": lr * lr_scales[name]})
        else:
            (decay if decays else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}, *scaled]


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where it applies (plain CPU or CUDA tensors): on this CPU it steps
    a 106M-parameter model 5-20x faster than ``foreach``, which the CPU runs tensor by tensor.
    Sharded (FSDP2 ``DTensor``) parameters keep ``foreach``."""
    params = [p for g in groups for p in g["params"]]
    plain = all(type(p) is torch.nn.Parameter or type(p) is torch.Tensor for p in params)
    fused = plain and params and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=True, **kwargs) if fused else torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up over ``warmup``
    steps, then linear or cosine decay from 1 to ``min_ratio`` at ``total`` (held there after)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape
