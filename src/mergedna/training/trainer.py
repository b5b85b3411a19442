"""The pretraining loop: plain PyTorch, resumable, DDP-ready.

``pretrain(TrainConfig)`` samples genome windows, runs the objectives of
:mod:`mergedna.objectives` under bf16 autocast (where the device multiplies bf16 natively, else fp32:
:mod:`mergedna.precision`), steps AdamW (β 0.9/0.95) with warm-up and
cosine decay, clips gradients, accumulates, validates on the held-out part, logs every loss
part to ``metrics.jsonl`` and a PNG, and writes atomic checkpoints. Each step's data and
randomness are functions of (seed, step, rank), so ``--resume`` after any kill reproduces
the uninterrupted run. A NaN/Inf loss or gradient skips the step; ``max_bad_steps`` in a row
stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import MergeDNAConfig, preset
from ..data.genome import Genome, GenomeSampler
from ..model import MergeDNAForPretraining
from ..precision import autocast, resolve
from ..runs import check_checkpoint, claim_run_dir
from ..seqio import atomic_write_dir, remove_stale_temps, write_json_atomic, write_text_atomic
from ..provenance import run_metadata
from ..tokenizer_stats import validation_row
from ..objectives import MergeDNAPretrainer, ObjectiveConfig, step_generator
from . import distributed as D
from .optim import adamw, lr_factor, param_groups
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .memory import choose_checkpointing, estimate
from .plots import plot_curves


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row."""


@dataclass
class TrainConfig:
    fasta: list[str] = field(default_factory=list)
    out: str = "runs/pretrain"
    preset: str = "small"
    model: dict = field(default_factory=dict)  # MergeDNAConfig overrides, e.g. {"merge_scope": "window"}
    init_from: str | None = None  # start from these weights (a from_pretrained directory)
    objective: dict = field(default_factory=dict)  # ObjectiveConfig overrides
    window: int = 4096  # N, bases per training window
    val: str = "0.01"  # held-out part: a fraction of every record, a record name, or rec:start-end
    max_n_fraction: float = 0.1
    rc_prob: float = 0.5
    cache_dir: str | None = None
    batch_size: int = 8  # windows per micro-batch per process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-4  # paper: 1e-4 at batch 256 x 4096
    min_lr_ratio: float = 0.1
    warmup: int = 100  # paper: 10k
    weight_decay: float = 1e-8  # paper value
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    bf16: bool | None = None  # None: bf16 autocast where the device has native bf16 (mergedna.precision)
    compile: bool = False
    # recompute block activations in backward (far less memory, ~1/3 more compute); None: on exactly when the
    # start-up estimate of activations + model state exceeds the device's memory (training/memory.py)
    activation_checkpointing: bool | None = None
    strategy: str = "ddp"  # or "fsdp" under torchrun
    seed: int = 0
    log_every: int = 10
    val_every: int = 100
    val_windows: int = 32
    ckpt_every: int = 100
    keep_last: int = 3
    max_bad_steps: int = 5
    time_limit: float | None = None  # minutes; stop (with a checkpoint) when exceeded
    resume: bool = False
    overwrite: bool = False  # delete the run already in `out` (see mergedna.runs)
    device: str | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr_ratio * lr``."""
    return cfg.lr * lr_factor(step, cfg.warmup, cfg.steps, "cosine", cfg.min_lr_ratio)


def build_model(cfg: TrainConfig) -> MergeDNAForPretraining:
    if cfg.init_from:
        return MergeDNAForPretraining.from_pretrained(cfg.init_from, strict=True, **cfg.model)  # decoders too
    return MergeDNAForPretraining(preset(cfg.preset, **cfg.model))


def apply_block_options(model: torch.nn.Module, compile: bool = False, activation_checkpointing: bool = False) -> None:
    """Applied from outside the model, parameter names unchanged: activation checkpointing per
    transformer block (``torch.distributed._composable.checkpoint``) and/or ``torch.compile``."""
    from ..attention import Block

    if compile:
        # One compiled graph per call pattern: local/full window, key bias or none, grad or no grad,
        # a detached input (pass 2). That is 7 in pretraining, near dynamo's default limit of 8,
        # past which it silently falls back to eager; shapes are dynamic and add none.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if activation_checkpointing:
            from torch.distributed._composable import checkpoint

            checkpoint(block)
        if compile:
            block.compile(dynamic=True)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; matrices decay, norms and embeddings do not (the groups fine-tuning uses too)."""
    return adamw(param_groups(model.named_parameters(), cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


class _Log:
    """metrics.jsonl writer (main process only); on resume drops rows past the resumed step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            write_text_atomic(path, "".join(ln + "\n" for ln in keep))
        elif enabled and resume_step is None and path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def pretrain(cfg: TrainConfig) -> dict:
    """Run pretraining as configured; returns a summary dict (also written to ``summary.json``)."""
    info = D.init_distributed(cfg.device)
    cfg = dataclasses.replace(cfg, bf16=resolve(cfg.bf16, info.device) == "bf16")  # run_config records what ran
    out = Path(cfg.out)
    obj_cfg = ObjectiveConfig(**cfg.objective)
    if not cfg.fasta:
        raise ValueError("no FASTA given: pass one or more --fasta files")
    if info.is_main:  # refuse a folder holding another run; clean what a killed run left
        claim_run_dir(out, "pretrain", cfg.to_dict(), cfg.resume, cfg.overwrite)
        remove_stale_temps(out / "checkpoints")
    # rank 0 builds the genome cache, the others wait and then open it
    if info.is_main:
        genome = Genome.from_fasta(cfg.fasta, cache_dir=cfg.cache_dir, progress=cfg.progress)
    D.barrier(info)
    if not info.is_main:
        genome = Genome.from_fasta(cfg.fasta, cache_dir=cfg.cache_dir)
    common = dict(window=cfg.window, max_n_fraction=cfg.max_n_fraction, val=_val_spec(cfg.val), seed=cfg.seed,
                  rank=info.rank, world_size=info.world_size)
    train_sampler = GenomeSampler(genome, rc_prob=cfg.rc_prob, split="train", **common)
    val_sampler = GenomeSampler(genome, rc_prob=0.0, split="val", **common)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    untrained = copy.deepcopy(model.mergedna.local_encoder).to(info.device)  # tokenizer diagnostics' reference
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and ckpt is None and info.is_main:
        print(f"--resume: no checkpoint under {out}/checkpoints, starting from scratch")
    start, optim_state = 0, None
    if ckpt is not None:
        model_state, optim_state, state = load_checkpoint(ckpt)
        check_checkpoint(ckpt, state.get("train"), cfg.to_dict())
        saved = MergeDNAConfig.from_dict(state["model_config"])
        if saved != model.config:
            raise ValueError(f"{ckpt}: checkpoint model config differs from this run's; "
                             f"resume with the same --preset and overrides")
        model.load_state_dict(model_state)
        start = int(state["step"])
    model.to(info.device)
    objective = MergeDNAPretrainer(model, obj_cfg)
    obj_cfg = objective.objective  # with the ratio's mean and clip resolved from the model's merge_ratio
    mem = estimate(model.config, cfg.window, cfg.batch_size, cfg.bf16, info.device,
                   shards=info.world_size if cfg.strategy == "fsdp" else 1, ratio=obj_cfg.ratio_mean,
                   lambda_latent=obj_cfg.lambda_latent, masking=obj_cfg.masking, objective=obj_cfg.objective)
    cfg = dataclasses.replace(cfg, activation_checkpointing=choose_checkpointing(cfg.activation_checkpointing, mem))
    if info.is_main:
        tqdm.write(mem.summary(cfg.activation_checkpointing), file=sys.stderr)
    apply_block_options(model, compile=cfg.compile, activation_checkpointing=cfg.activation_checkpointing)
    wrapped = D.wrap_model(objective, info, cfg.strategy, bf16=cfg.bf16)
    optimizer = make_optimizer(model, cfg)
    if optim_state is not None:
        D.load_optimizer_state(wrapped, optimizer, optim_state)

    log = _Log(out / "metrics.jsonl", info.is_main, start if ckpt is not None else None)
    meta = {**run_metadata(), "world_size": info.world_size}
    if info.is_main:
        write_json_atomic(out / "run_config.json", {"train": cfg.to_dict(), "objective": obj_cfg.to_dict(),
                                                    "model": model.config.to_dict(), "meta": meta,
                                                    "memory": mem.to_dict()})
    n_params = sum(p.numel() for p in model.parameters())
    bases_per_step = cfg.batch_size * cfg.window * cfg.grad_accum * info.world_size
    bar = tqdm(total=cfg.steps, initial=start, disable=not (info.is_main and cfg.progress), unit="step",
               desc=f"pretrain {n_params / 1e6:.1f}M")
    t0, bad, step, stop_reason, final_state = time.time(), 0, start, "steps", None
    window_t, window_bases = time.time(), 0

    def save(at: int):
        model_state, optim_state = D.full_state(wrapped, optimizer)  # a collective under FSDP
        if info.is_main:
            state = {"model_config": model.config.to_dict(), "train": cfg.to_dict(), "objective": obj_cfg.to_dict(),
                     "meta": meta}
            save_checkpoint(out, at, model, model_state, optim_state, state, cfg.keep_last)
        D.barrier(info)
        return model_state

    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        names, parts_sum = None, None  # this step's loss parts, a device vector (no host reads per micro-step)
        for micro in range(cfg.grad_accum):
            index = step * cfg.grad_accum + micro
            ids = train_sampler.batch(index, cfg.batch_size).to(info.device, non_blocking=True)
            with D.gradient_sync(wrapped, sync=micro == cfg.grad_accum - 1):
                with autocast(cfg.bf16, info.device):
                    parts = wrapped(ids, step_generator(cfg.seed, index, info.rank))
                (parts["loss"] / cfg.grad_accum).backward()
            names = list(parts)
            vec = torch.stack([v.detach().float().to(info.device) for v in parts.values()]) / cfg.grad_accum
            parts_sum = vec if parts_sum is None else parts_sum + vec
        grad_norm = _full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
        # one collective and one host read per step: every rank's finite flag and time-limit flag together
        out_of_time = cfg.time_limit is not None and (time.time() - t0) / 60 > cfg.time_limit
        flags = torch.stack([(torch.isfinite(parts_sum[names.index("loss")]) & torch.isfinite(grad_norm)).float(),
                             torch.tensor(float(out_of_time), device=info.device)])
        n_finite, n_out_of_time = D.all_reduce_sum(flags, info).tolist()
        finite, out_of_time = n_finite == info.world_size, n_out_of_time > 0
        if finite:
            optimizer.step()
            bad = 0
        else:
            bad += 1
            log.write({"split": "train", "step": step + 1, "skipped": True,
                       "loss": float(parts_sum[names.index("loss")]), "grad_norm": float(grad_norm)})
        optimizer.zero_grad(set_to_none=True)
        if bad >= cfg.max_bad_steps:
            last = latest_checkpoint(out)
            raise TrainingDiverged(f"{bad} non-finite steps in a row (last at step {step + 1}); stopping. "
                                   f"Last good checkpoint: {last or 'none yet'}. Lower --lr or check the data.")
        window_bases += bases_per_step
        done = step + 1
        if finite and (done % cfg.log_every == 0 or done == cfg.steps):
            # the only host read of the loss parts: once per log_every steps
            red = D.all_reduce_sum(torch.cat([parts_sum, grad_norm.float().reshape(1)]), info).tolist()
            sums = {k: v / info.world_size for k, v in zip(names, red)}
            bps = window_bases / max(time.time() - window_t, 1e-9)
            window_t, window_bases = time.time(), 0
            log.write({"split": "train", "step": done, "lr": lr_at(step, cfg), "grad_norm": red[-1] / info.world_size,
                       "bp_per_s": bps, "elapsed_s": time.time() - t0, **sums})
            bar.set_postfix({k: f"{sums[k]:.3f}" for k in ("loss", "mtr", "latent_mtr", "amtm", "mlm") if k in sums}
                            | {"bp/s": f"{bps:,.0f}"})
        bar.update(1)
        last = done == cfg.steps or out_of_time
        if done % cfg.val_every == 0 or last:
            row = validate(wrapped, val_sampler, cfg, info)
            if not (info.enabled and cfg.strategy == "fsdp"):  # FSDP shards φ: it cannot run outside the root
                with autocast(cfg.bf16, info.device):  # pass 1's tokenization at the mean ratio, as validate runs it
                    row |= validation_row(model.mergedna.local_encoder, untrained,
                                          val_sampler.val_batches(cfg.val_windows, cfg.batch_size),
                                          obj_cfg.ratio_mean, reduce=lambda t: D.all_reduce_sum(t, info))
            log.write({"split": "val", "step": done, **row})
            if info.is_main:
                plot_curves(out / "metrics.jsonl", out / "curves.png")
        if done % cfg.ckpt_every == 0 or last:
            final_state = save(done)
        if out_of_time:
            stop_reason = f"time limit of {cfg.time_limit} min"
            break
    bar.close()
    summary = {"steps_done": step + 1 if cfg.steps > start else start, "stopped_by": stop_reason,
               "train_minutes": (time.time() - t0) / 60, "parameters": n_params, "meta": meta}
    if final_state is None:
        final_state, _ = D.full_state(wrapped, optimizer)
    if info.is_main:
        atomic_write_dir(out / "model", lambda tmp: model.write_files(tmp, final_state))
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        write_json_atomic(out / "summary.json", summary)
    D.barrier(info)
    D.cleanup(info)
    return summary


def _val_spec(val: str):
    """'0.01' -> 0.01 (fraction of every record); anything else is a record name or region."""
    try:
        return float(val)
    except (TypeError, ValueError):
        return val


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (possibly FSDP2-sharded) DTensor result such as the total gradient norm."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def validate(wrapped, sampler: GenomeSampler, cfg: TrainConfig, info) -> dict:
    """Mean of every loss part over the fixed held-out windows, at the mean ratio, fixed noise.

    Every rank runs the same number of forward passes (the most any rank has; a rank short of
    windows repeats one with weight 0, a rank with none runs a poly-A window): an FSDP2 forward
    is a collective, and a rank that got no validation windows still takes part in the reduction.
    One host read at the end."""
    module = wrapped.module if hasattr(wrapped, "module") else wrapped
    was_training = module.training
    module.eval()
    ratio = module.objective.ratio_mean
    batches = sampler.val_batches(cfg.val_windows, cfg.batch_size)
    n_batches = int(D.all_reduce_max(torch.tensor([len(batches)]), info).item())
    sums, names = None, None
    for i in range(n_batches):
        real = i < len(batches)
        ids = batches[i] if real else (batches[-1] if batches else torch.zeros(1, cfg.window, dtype=torch.long))
        with autocast(cfg.bf16, info.device):
            parts = module(ids.to(info.device), step_generator(cfg.seed, i, rank=10_000 + info.rank), ratio=ratio)
        names = list(parts)
        weight = float(ids.shape[0]) if real else 0.0
        vec = torch.stack([v.detach().float().to(info.device) for v in parts.values()] +
                          [torch.ones((), device=info.device)]) * weight  # last entry counts windows
        sums = vec if sums is None else sums + vec
    module.train(was_training)
    if sums is None:  # no rank has any validation window
        return {"windows": 0}
    total = D.all_reduce_sum(sums, info).tolist()
    if total[-1] == 0:
        return {"windows": 0}
    return {k: v / total[-1] for k, v in zip(names, total[:-1])} | {"windows": int(total[-1])}
