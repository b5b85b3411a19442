"""The pretraining loop: plain PyTorch, resumable, DDP-ready.

``pretrain(TrainConfig)`` samples genome windows, runs the objectives of
:mod:`mergedna.objectives` under bf16 autocast (where bf16 is native and measured faster than fp32, else fp32:
:mod:`mergedna.precision`), steps AdamW (β 0.9/0.95) with warm-up and
cosine decay, clips gradients, accumulates, validates on the held-out part, logs every loss
part to ``metrics.jsonl`` and a PNG, and writes atomic checkpoints. Each step's data and
randomness are functions of (seed, step, rank), so ``--resume`` after any kill reproduces
the uninterrupted run. A NaN/Inf loss or gradient skips the step; ``max_bad_steps`` in a row
stop the run with the last good checkpoint intact.

``pretrain`` is a short loop over named steps, each a function of a :class:`Run` (what
:func:`setup_run` builds once): :func:`train_step` (micro-steps in :func:`forward_backward`),
:func:`skip_or_stop` (the NaN policy), :func:`maybe_log`, :func:`maybe_validate`,
:func:`maybe_checkpoint`, and :func:`finish`. Parallelism is applied in :func:`setup_run` from
outside the model (:func:`mergedna.training.distributed.wrap_model`).
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
from .memory import MemoryEstimate, choose_checkpointing, estimate
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
    bf16: bool | None = None  # None: precision "auto" (bf16 where native and measured faster; mergedna.precision)
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


@dataclass
class Run:
    """What :func:`setup_run` builds once and every step reads."""

    cfg: TrainConfig  # as resolved: the precision and activation checkpointing that run
    info: D.DistInfo
    out: Path
    model: MergeDNAForPretraining  # the bare model: saving, diagnostics, gradient clipping
    obj_cfg: ObjectiveConfig  # with the ratio's mean and clip resolved from the model's merge_ratio
    wrapped: torch.nn.Module  # the MergeDNAPretrainer, wrapped for the strategy from outside (distributed.py)
    optimizer: torch.optim.Optimizer
    train_sampler: GenomeSampler
    val_sampler: GenomeSampler
    untrained: torch.nn.Module  # the local encoder at initialisation: the tokenizer diagnostics' reference
    log: _Log
    meta: dict  # run_metadata() and the world size, recorded in run_config, checkpoints and summary
    start: int  # the first step to run: the resumed checkpoint's step, else 0


@dataclass
class StepResult:
    """One optimiser step. ``parts``: this rank's loss parts (named by ``names``), mean over the
    micro-steps, one device vector; ``finite`` and ``out_of_time`` are what all ranks agreed."""

    names: list[str]
    parts: torch.Tensor
    grad_norm: torch.Tensor
    finite: bool
    out_of_time: bool

    @property
    def loss(self) -> torch.Tensor:
        return self.parts[self.names.index("loss")]


def pretrain(cfg: TrainConfig) -> dict:
    """Run pretraining as configured; returns a summary dict (also written to ``summary.json``)."""
    run = setup_run(cfg)
    cfg, n_params = run.cfg, sum(p.numel() for p in run.model.parameters())
    meter = _Throughput(cfg.batch_size * cfg.window * cfg.grad_accum * run.info.world_size)
    deadline = None if cfg.time_limit is None else meter.t0 + 60 * cfg.time_limit
    bar = tqdm(total=cfg.steps, initial=run.start, disable=not (run.info.is_main and cfg.progress), unit="step",
               desc=f"pretrain {n_params / 1e6:.1f}M")
    done, bad, stop_reason, final_state = run.start, 0, "steps", None
    for step in range(run.start, cfg.steps):
        result = train_step(run, step, deadline)
        bad = skip_or_stop(run, step, result, bad)
        done = step + 1
        meter.add_step()
        maybe_log(run, step, result, meter, bar)
        bar.update(1)
        last = done == cfg.steps or result.out_of_time
        maybe_validate(run, done, last)
        saved = maybe_checkpoint(run, done, last)
        final_state = saved if saved is not None else final_state
        if result.out_of_time:
            stop_reason = f"time limit of {cfg.time_limit} min"
            break
    bar.close()
    summary = {"steps_done": done, "stopped_by": stop_reason, "train_minutes": meter.elapsed() / 60,
               "parameters": n_params, "meta": run.meta}
    return finish(run, summary, final_state)


def setup_run(cfg: TrainConfig) -> Run:
    """Everything before the first step: join the process group, claim the run folder, open the
    samplers, build the model (with the latest checkpoint's weights on ``resume``), wrap it for the
    strategy, build the optimiser, and record the resolved config in ``run_config.json``."""
    info = D.init_distributed(cfg.device)
    # run_config records what ran; the ranks agree on it (each one's "auto" is a measurement)
    cfg = dataclasses.replace(cfg, bf16=D.agree_bf16(resolve(cfg.bf16, info.device) == "bf16", info))
    out = Path(cfg.out)
    obj_cfg = ObjectiveConfig(**cfg.objective)
    if not cfg.fasta:
        raise ValueError("no FASTA given: pass one or more --fasta files")
    if info.is_main:  # refuse a folder holding another run; clean what a killed run left
        claim_run_dir(out, "pretrain", cfg.to_dict(), cfg.resume, cfg.overwrite)
        remove_stale_temps(out / "checkpoints")
    train_sampler, val_sampler = open_samplers(cfg, info)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    untrained = copy.deepcopy(model.mergedna.local_encoder).to(info.device)
    resumed, optim_state = load_resume_state(cfg, model, out, info)
    model.to(info.device)
    objective = MergeDNAPretrainer(model, obj_cfg)
    obj_cfg = objective.objective
    cfg, mem = plan_memory(cfg, obj_cfg, model, info)
    apply_block_options(model, compile=cfg.compile, activation_checkpointing=cfg.activation_checkpointing)
    wrapped = D.wrap_model(objective, info, cfg.strategy, bf16=cfg.bf16)
    optimizer = make_optimizer(model, cfg)
    if optim_state is not None:
        D.load_optimizer_state(wrapped, optimizer, optim_state)
    run = Run(cfg, info, out, model, obj_cfg, wrapped, optimizer, train_sampler, val_sampler, untrained,
              log=_Log(out / "metrics.jsonl", info.is_main, resumed),
              meta={**run_metadata(), "world_size": info.world_size}, start=resumed or 0)
    if info.is_main:
        write_json_atomic(out / "run_config.json", {"train": cfg.to_dict(), "objective": obj_cfg.to_dict(),
                                                    "model": model.config.to_dict(), "meta": run.meta,
                                                    "memory": mem.to_dict()})
    return run


def open_samplers(cfg: TrainConfig, info: D.DistInfo) -> tuple[GenomeSampler, GenomeSampler]:
    """The train and held-out samplers of this rank. Rank 0 builds the genome cache, the others
    wait and then open it."""
    if info.is_main:
        genome = Genome.from_fasta(cfg.fasta, cache_dir=cfg.cache_dir, progress=cfg.progress)
    D.barrier(info)
    if not info.is_main:
        genome = Genome.from_fasta(cfg.fasta, cache_dir=cfg.cache_dir)
    common = dict(window=cfg.window, max_n_fraction=cfg.max_n_fraction, val=_val_spec(cfg.val), seed=cfg.seed,
                  rank=info.rank, world_size=info.world_size)
    return (GenomeSampler(genome, rc_prob=cfg.rc_prob, split="train", **common),
            GenomeSampler(genome, rc_prob=0.0, split="val", **common))


def load_resume_state(cfg: TrainConfig, model: MergeDNAForPretraining, out: Path,
                      info: D.DistInfo) -> tuple[int | None, dict | None]:
    """On ``resume``, load the latest checkpoint's weights into ``model`` and return its step and
    optimiser state; (None, None) when there is none. A checkpoint of other settings (see
    :func:`mergedna.runs.check_checkpoint`) or another model config is refused."""
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and ckpt is None and info.is_main:
        tqdm.write(f"--resume: no checkpoint under {out}/checkpoints, starting from scratch", file=sys.stderr)
    if ckpt is None:
        return None, None
    model_state, optim_state, state = load_checkpoint(ckpt)
    check_checkpoint(ckpt, state.get("train"), cfg.to_dict())
    saved = MergeDNAConfig.from_dict(state["model_config"])
    if saved != model.config:
        raise ValueError(f"{ckpt}: checkpoint model config differs from this run's; "
                         f"resume with the same --preset and overrides")
    model.load_state_dict(model_state)
    return int(state["step"]), optim_state


def plan_memory(cfg: TrainConfig, obj_cfg: ObjectiveConfig, model: MergeDNAForPretraining,
                info: D.DistInfo) -> tuple[TrainConfig, MemoryEstimate]:
    """The start-up estimate of memory per rank, and the config with activation checkpointing
    decided by it where the config leaves it open (training/memory.py)."""
    mem = estimate(model.config, cfg.window, cfg.batch_size, cfg.bf16, info.device,
                   shards=info.world_size if cfg.strategy == "fsdp" else 1, ratio=obj_cfg.ratio_mean,
                   lambda_latent=obj_cfg.lambda_latent, masking=obj_cfg.masking, objective=obj_cfg.objective)
    cfg = dataclasses.replace(cfg, activation_checkpointing=choose_checkpointing(cfg.activation_checkpointing, mem))
    if info.is_main:
        tqdm.write(mem.summary(cfg.activation_checkpointing), file=sys.stderr)
    return cfg, mem


def train_step(run: Run, step: int, deadline: float | None = None) -> StepResult:
    """Optimiser step ``step`` (0-based): set the scheduled lr, run the micro-steps, clip, then one
    collective that gives every rank the same verdict: all ranks' loss and gradient norm finite, and
    any rank past ``deadline`` (a ``time.time()``). The optimiser steps only on a finite verdict."""
    cfg, info = run.cfg, run.info
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    names, parts = forward_backward(run, step)
    grad_norm = _full(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip))
    # one collective and one host read per step: every rank's finite flag and time-limit flag together
    out_of_time = deadline is not None and time.time() > deadline
    flags = torch.stack([(torch.isfinite(parts[names.index("loss")]) & torch.isfinite(grad_norm)).float(),
                         torch.tensor(float(out_of_time), device=info.device)])
    n_finite, n_out_of_time = D.all_reduce_sum(flags, info).tolist()
    result = StepResult(names, parts, grad_norm, finite=n_finite == info.world_size, out_of_time=n_out_of_time > 0)
    if result.finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return result


def forward_backward(run: Run, step: int) -> tuple[list[str], torch.Tensor]:
    """The ``grad_accum`` micro-steps of optimiser step ``step``: forward under autocast and backward
    of loss / grad_accum, gradients synchronised on the last micro-step only. Micro-step ``index``'s
    windows and noise are functions of (seed, index, rank), whatever ran before. Returns the loss
    parts' names and their mean over the micro-steps, one device vector (no host read here)."""
    cfg, info = run.cfg, run.info
    names, total = None, None
    for micro in range(cfg.grad_accum):
        index = step * cfg.grad_accum + micro
        ids = run.train_sampler.batch(index, cfg.batch_size).to(info.device, non_blocking=True)
        with D.gradient_sync(run.wrapped, sync=micro == cfg.grad_accum - 1):
            with autocast(cfg.bf16, info.device):
                parts = run.wrapped(ids, step_generator(cfg.seed, index, info.rank))
            (parts["loss"] / cfg.grad_accum).backward()
        names = list(parts)
        vec = torch.stack([v.detach().float().to(info.device) for v in parts.values()]) / cfg.grad_accum
        total = vec if total is None else total + vec
    return names, total


def skip_or_stop(run: Run, step: int, result: StepResult, bad: int) -> int:
    """The NaN policy. A non-finite step was skipped by :func:`train_step` (no optimiser step); it
    is logged as skipped, and ``max_bad_steps`` in a row raise :class:`TrainingDiverged`, the last
    good checkpoint intact. Returns the count of non-finite steps in a row."""
    bad = 0 if result.finite else bad + 1
    if not result.finite:
        run.log.write({"split": "train", "step": step + 1, "skipped": True,
                       "loss": float(result.loss), "grad_norm": float(result.grad_norm)})
    if bad >= run.cfg.max_bad_steps:
        last = latest_checkpoint(run.out)
        raise TrainingDiverged(f"{bad} non-finite steps in a row (last at step {step + 1}); stopping. "
                               f"Last good checkpoint: {last or 'none yet'}. Lower --lr or check the data.")
    return bad


def maybe_log(run: Run, step: int, result: StepResult, meter: _Throughput, bar) -> None:
    """Every ``log_every`` finite steps and at the last: a train row of ``metrics.jsonl`` (loss
    parts and gradient norm averaged over ranks, lr, bases per second since the last row) and the
    progress bar. The only host read of the loss parts."""
    cfg, info, done = run.cfg, run.info, step + 1
    if not (result.finite and (done % cfg.log_every == 0 or done == cfg.steps)):
        return
    red = D.all_reduce_sum(torch.cat([result.parts, result.grad_norm.float().reshape(1)]), info).tolist()
    sums = {k: v / info.world_size for k, v in zip(result.names, red)}
    bps = meter.rate()
    run.log.write({"split": "train", "step": done, "lr": lr_at(step, cfg), "grad_norm": red[-1] / info.world_size,
                   "bp_per_s": bps, "elapsed_s": meter.elapsed(), **sums})
    bar.set_postfix({k: f"{sums[k]:.3f}" for k in ("loss", "mtr", "latent_mtr", "amtm", "mlm") if k in sums}
                    | {"bp/s": f"{bps:,.0f}"})


def maybe_validate(run: Run, done: int, last: bool) -> None:
    """Every ``val_every`` steps and at the last: a val row of ``metrics.jsonl`` (the held-out loss
    parts, :func:`validate`, and the tokenizer diagnostics against the untrained local encoder) and
    the curves redrawn."""
    cfg, info = run.cfg, run.info
    if not (done % cfg.val_every == 0 or last):
        return
    row = validate(run.wrapped, run.val_sampler, cfg, info)
    if not (info.enabled and cfg.strategy == "fsdp"):  # FSDP shards φ: it cannot run outside the root
        with autocast(cfg.bf16, info.device):  # pass 1's tokenization at the mean ratio, as validate runs it
            row |= validation_row(run.model.mergedna.local_encoder, run.untrained,
                                  run.val_sampler.val_batches(cfg.val_windows, cfg.batch_size),
                                  run.obj_cfg.ratio_mean, reduce=lambda t: D.all_reduce_sum(t, info))
    run.log.write({"split": "val", "step": done, **row})
    if info.is_main:
        plot_curves(run.out / "metrics.jsonl", run.out / "curves.png")


def maybe_checkpoint(run: Run, done: int, last: bool) -> dict | None:
    """Every ``ckpt_every`` steps and at the last: an atomic checkpoint of step ``done`` (the last
    ``keep_last`` kept). Returns the full model state it gathered, else None. A collective under
    FSDP: every rank calls it."""
    if not (done % run.cfg.ckpt_every == 0 or last):
        return None
    model_state, optim_state = D.full_state(run.wrapped, run.optimizer)
    if run.info.is_main:
        state = {"model_config": run.model.config.to_dict(), "train": run.cfg.to_dict(),
                 "objective": run.obj_cfg.to_dict(), "meta": run.meta}
        save_checkpoint(run.out, done, run.model, model_state, optim_state, state, run.cfg.keep_last)
    D.barrier(run.info)
    return model_state


def finish(run: Run, summary: dict, final_state: dict | None) -> dict:
    """Write the final model (``model/``, from ``final_state`` or gathered now), the curves and
    ``summary.json``; leave the process group. Returns ``summary``."""
    if final_state is None:
        final_state, _ = D.full_state(run.wrapped, run.optimizer)  # a collective under FSDP
    if run.info.is_main:
        atomic_write_dir(run.out / "model", lambda tmp: run.model.write_files(tmp, final_state))
        plot_curves(run.out / "metrics.jsonl", run.out / "curves.png")
        write_json_atomic(run.out / "summary.json", summary)
    D.barrier(run.info)
    D.cleanup(run.info)
    return summary


class _Throughput:
    """Time since the loop began, and bases per second over the steps since the last log row."""

    def __init__(self, bases_per_step: int):
        self.bases_per_step, self.window_bases = bases_per_step, 0
        self.t0 = self.window_t = time.time()

    def add_step(self) -> None:
        self.window_bases += self.bases_per_step

    def rate(self) -> float:
        """Bases per second since the last call (or the start); starts the next window."""
        bps = self.window_bases / max(time.time() - self.window_t, 1e-9)
        self.window_t, self.window_bases = time.time(), 0
        return bps

    def elapsed(self) -> float:
        return time.time() - self.t0


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
