"""Fine-tuning and honest evaluation of sequence classifiers (docs/method.md §8).

:func:`finetune` trains a :class:`~mergedna.heads.MergeDNAForSequenceClassification` on a labelled
task, from a checkpoint (``model=DIR``) or from random initialisation (``preset=NAME``, the
from-scratch baseline), and evaluates it the way benchmarks are meant to be read:

* model selection on **dev only**: dev metrics every ``eval_every`` steps, early stopping when the
  selection metric (dev MCC by default) has not improved for ``patience`` evaluations, and the
  best-on-dev weights restored at the end;
* **one** evaluation on test, after selection.

Splits: a task without dev gets one carved from train (stratified, :func:`make_split` with
``split_seed``, fraction ``dev_fraction``); a single unsplit file is split 80/10/10. A task
without train (GUE's EMP, ``splice/reconstructed``...) is an error unless ``train_on_dev``: then a
stratified part of dev is carved off for selection, the rest is trained on, and the result is
marked ``comparable: false`` (the published numbers never trained on dev).

Training: full fine-tuning, or LoRA (``lora_rank > 0``, via ``peft``) on the attention ``qkv``/
``proj`` and SwiGLU ``w12``/``w3`` linears of every Local and Latent Encoder block, the encoder
frozen and the head trained; the adapters are merged into the weights before the test
evaluation and the save, so the saved checkpoint is a plain one. AdamW (weight decay on matrices
only), linear warm-up then linear or cosine decay, gradient clipping, and ``precision="auto"``: bf16
autocast where bf16 is native and measured faster than fp32, fp32 elsewhere (:mod:`mergedna.precision`; the
run's ``metrics.json`` records which).

Output directory (a new folder or one holding no run, :mod:`mergedna.runs`): ``run.json`` (written
first: settings and provenance), ``model/`` (``save_pretrained``, rewritten each time dev improves, so a
failure late in a run keeps the best model so far), then ``dev_curve.png``, ``test_predictions.tsv``
and ``metrics.json`` (written last and atomically: its presence means the run finished).
Metrics: MCC, accuracy, macro-F1 and AUROC (binary: the positive class's probability;
multiclass: one-vs-rest macro; ``None`` when undefined, e.g. one class only).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import POOLINGS, MergeDNAConfig, preset as preset_config
from .data.task_batching import LENGTH_POLICIES, average_chunk_logits, make_dataloader
from .data.tasks import LabelledSplit, Task, load_task, make_split
from .heads import FLATTEN_POOLINGS, HEAD_LR_RULES, SIZED_POOLINGS, MergeDNAForSequenceClassification, SequencePooler
from .objectives import MaskedModellingLoss
from .precision import PRECISIONS, autocast, resolve
from .pretrained import load_config
from .provenance import run_metadata
from .runs import FIT_STATE, claim_run_dir
from .seqio import atomic_path, write_json_atomic
from .training.checkpoints import load_fit_state, save_fit_state
from .training.optim import adamw, lr_factor, param_groups
from .training.trainer import apply_block_options

METRICS = ("mcc", "accuracy", "f1", "auroc")
# every Local and Latent Encoder block's attention and SwiGLU linears (not the grouping projections)
LORA_TARGETS = r"mergedna\.(local_encoder|latent_encoder)\.blocks\.\d+\.(attn\.(qkv|proj)|ffn\.(w12|w3))"


# peak learning rates when none is given: a randomly initialised encoder needs a far larger step than
# a pretrained one (the paper's fine-tuning grid, for pretrained models, tops out at 1e-4)
DEFAULT_LR = {"random": 1e-3, "pretrained": 1e-4}
# dev evaluations in a row that predict a single class before the standby masked loss is switched on: two, as
# from-scratch UCI splice runs can predict one class at their first evaluation and learn by the second
# (results/demo, results/position_heads), where collapsed GUE runs stay at the prior for many (tf/0, mouse/0)
COLLAPSE_EVALS = 2
FLATTEN_MAX_LENGTH = 1024  # pooling="auto" picks mean_flatten for fixed-length tasks up to this many bases
# --sweep: the paper's grid for pretrained models; "and up" for a randomly initialised one
SWEEP_LRS = {"pretrained": (1e-5, 5e-5, 1e-4), "random": (1e-4, 3e-4, 1e-3)}
SWEEP_WEIGHT_DECAYS = (0.0, 0.01)


class TaskSetupError(ValueError):
    """The task cannot be fine-tuned as asked (e.g. no train split without ``train_on_dev``)."""


@dataclass
class FinetuneSettings:
    """Hyperparameters of one run. ``max_steps`` (when set) wins over ``epochs``; ``eval_every``
    None means about ten evaluations per run and at least one per epoch; ``patience`` None turns
    early stopping off (the best-on-dev weights are still restored). Patience counts only dev
    evaluations that predicted more than one class: a from-scratch run may sit at the class prior for
    its first evaluations before it starts to learn (results/position_heads, GUE tf/0)."""

    lr: float | None = None  # None: DEFAULT_LR for the model's init (random or pretrained)
    weight_decay: float = 0.01
    batch_size: int = 32
    eval_batch_size: int | None = None
    epochs: float = 10.0
    max_steps: int | None = None
    max_time: float | None = None  # seconds of training and dev evaluation; the schedule follows whichever of steps
    #                                and time runs out first (see fit)
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    schedule: str = "linear"
    eval_every: int | None = None
    patience: int | None = 3
    select_metric: str = "mcc"
    clip: float = 1.0
    ema: float = 0.0  # > 0: evaluate, select and keep an exponential moving average of the weights with this decay
    #                   (warmed up as min(ema, (1 + step) / (10 + step))); 0 = off, the raw weights
    mlm_weight: float = 0.0  # > 0: add this × a masked-modelling loss on each training batch's own sequences
    mlm_on_collapse: float = 1.0  # > 0 (with mlm_weight 0): COLLAPSE_EVALS dev evaluations in a row predicting one
    #                               class switch that loss on at this weight
    head_lr_scale: str = "sqrt_fan_in"  # the flatten layer's lr: × √(hidden/fan-in), × hidden/fan-in, or "none" (heads.py)
    precision: str = "auto"  # bf16 autocast where it is measured faster (mergedna.precision), else fp32
    compile: bool = False  # torch.compile each transformer block: 1.25-1.6x on short sequences, ~40 s to compile
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_dropout: float = 0.05
    length_policy: str = "error"
    max_length: int | None = None
    merge_ratio: float | None = None
    dropout: float | None = None  # residual dropout in every block (config.dropout), on any model
    conv_stem: int | None = None  # from random init: config.conv_stem (a checkpoint keeps its own)
    pooling: str | None = "auto"  # sequence head (config.pooling): "auto" (see default_pooling); None keeps the model's
    pool_bin: int | None = None  # flatten heads: max over bins of this many bases (config.pool_bin); None: the model's
    dev_fraction: float = 0.1
    split_seed: int = 0
    train_on_dev: bool = False

    def __post_init__(self):
        checks = {"schedule": (self.schedule, ("linear", "cosine")),
                  "precision": (self.precision, PRECISIONS),
                  "select_metric": (self.select_metric, METRICS),
                  "length_policy": (self.length_policy, LENGTH_POLICIES),
                  "pooling": (self.pooling, (None, "auto", *POOLINGS)),
                  "head_lr_scale": (self.head_lr_scale, HEAD_LR_RULES)}
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("mlm_weight", "mlm_on_collapse"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (a decay such as 0.99; 0 = off), got {self.ema}")
        if not 0 < self.dev_fraction < 0.5:
            raise ValueError(f"dev_fraction must be in (0, 0.5), got {self.dev_fraction}")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be > 0 seconds, got {self.max_time}")
        # the model-config overrides, checked by the config itself now, before a run folder is claimed
        MergeDNAConfig(**{k: getattr(self, k) for k in ("merge_ratio", "max_length", "dropout", "conv_stem",
                                                         "pool_bin") if getattr(self, k) is not None})
        if self.pooling not in (None, "auto"):  # an "auto" or kept head is checked once known (build_model)
            check_pool_bin(self.pooling, self.pool_bin)
        if self.precision == "auto":  # -> what runs on the CPU, so results record it (finetune redoes it for a GPU)
            self.precision = resolve(self.precision)


def check_pool_bin(pooling: str, pool_bin: int | None) -> None:
    """Bins only coarsen a flatten path: asked for with any other head they would do nothing, silently."""
    if pool_bin not in (None, 1) and pooling not in FLATTEN_POOLINGS:
        raise ValueError(f"pool_bin {pool_bin} needs a head with a flatten path ({', '.join(FLATTEN_POOLINGS)}); "
                         f"the head is {pooling!r}")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to fine-tune on: ``device`` as given ("cpu", "cuda", "cuda:1"), or for None/"auto" CUDA where
    there is one, else the CPU. A CUDA device that is not there is a clear error, not a crash at the first step."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} usable CUDA "
                         "device(s) (torch.cuda.is_available() is False without a GPU or a CUDA build of PyTorch)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device}")
    return device


def to_device(batch: dict, device: torch.device) -> dict:
    """The model's inputs of a task batch on ``device``; ``parent`` (chunk -> sequence) stays on the host."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "parent" else v
            for k, v in batch.items()}


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """MCC, accuracy, macro-F1 and AUROC of class probabilities ``probs`` (n, C) against ``labels`` (n,)."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    pred = probs.argmax(1)
    out = {"mcc": float(matthews_corrcoef(labels, pred)), "accuracy": float(accuracy_score(labels, pred)),
           "f1": float(f1_score(labels, pred, average="macro", labels=np.arange(probs.shape[1]), zero_division=0)),
           "predicted_classes": int(len(np.unique(pred)))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            if probs.shape[1] == 2:
                auroc = float(roc_auc_score(labels, probs[:, 1]))
            else:
                auroc = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                            labels=np.arange(probs.shape[1])))
    except ValueError:  # sklearn raises or returns NaN when a class is absent from labels
        auroc = math.nan
    out["auroc"] = auroc if math.isfinite(auroc) else None
    return out


def prepare_splits(task: Task, settings: FinetuneSettings) -> tuple[dict[str, LabelledSplit], dict]:
    """``({"train", "dev", "test"}, notes)``: the task's splits, with dev carved (and said so in
    ``notes``) when the task has none, per the module docstring."""
    splits, notes = dict(task.splits), {"comparable": True, "dev_source": "task"}
    frac = (1 - settings.dev_fraction, settings.dev_fraction)
    if set(splits) == {"all"}:
        f = settings.dev_fraction  # dev and test get f each: 80/10/10 at the default
        splits = make_split(task, (1 - 2 * f, f, f), seed=settings.split_seed).splits
        notes["dev_source"] = notes["test_source"] = f"carved from the single file (split_seed {settings.split_seed})"
    if "train" not in splits:
        if not settings.train_on_dev:
            raise TaskSetupError(
                f"task {task.name!r} has no train split (missing: {list(task.missing_splits)}); pass "
                "--train-on-dev (train_on_dev=True) to train on its dev split, which makes the result "
                "not comparable with published numbers")
        if "dev" not in splits:
            raise TaskSetupError(f"task {task.name!r} has neither a train nor a dev split")
        carved = make_split(splits.pop("dev"), frac, seed=settings.split_seed)
        splits["train"], splits["dev"] = carved["train"], carved["test"]
        notes.update(comparable=False, dev_source=f"{settings.dev_fraction:.0%} of the task's dev split, stratified",
                     reason="trained on the task's dev split (the task ships without train)")
    elif "dev" not in splits:
        carved = make_split(splits["train"], frac, seed=settings.split_seed)
        splits["train"], splits["dev"] = carved["train"], carved["test"]
        notes["dev_source"] = (f"{settings.dev_fraction:.0%} of train, stratified "
                               f"(split_seed {settings.split_seed}); the task ships without dev")
    if "test" not in splits:
        raise TaskSetupError(f"task {task.name!r} has no test split (it has {sorted(task.splits)})")
    if task.num_classes < 2:
        raise TaskSetupError(f"task {task.name!r} has one class only ({task.label_names[0]!r}): there is nothing "
                             "to learn; check the label column (--label-column)")
    empty = [k for k in ("train", "dev", "test") if len(splits[k]) == 0]
    if empty:
        raise TaskSetupError(f"task {task.name!r}: split(s) {empty} came out empty ({notes['dev_source']}); "
                             f"the task is too small for --dev-fraction {settings.dev_fraction}")
    return {k: splits[k] for k in ("train", "dev", "test")}, notes


def default_pooling(train: LabelledSplit) -> str:
    """The sequence head ``pooling="auto"`` picks (results/position_heads): ``mean_flatten`` when every
    training sequence has the same length, at most :data:`FLATTEN_MAX_LENGTH` bases; else ``cls``."""
    lengths = train.lengths
    return "mean_flatten" if lengths.min() == lengths.max() <= FLATTEN_MAX_LENGTH else "cls"


def build_model(task: Task, model: str | os.PathLike | None, preset: str | None,
                settings: FinetuneSettings, train: LabelledSplit | None = None
                ) -> tuple[MergeDNAForSequenceClassification, dict]:
    """The classifier for ``task``: from checkpoint ``model`` (fresh head) or random ``preset``.
    ``train`` (the training split) chooses the ``auto`` head and sizes the position-aware poolers.
    Call after seeding: the random parts draw from torch's global generator."""
    if (model is None) == (preset is None):
        raise ValueError("give exactly one of model (a checkpoint directory) or preset (random initialisation)")
    saved = load_config(model) if model is not None else None  # the checkpoint's config, read once
    overrides = {"num_labels": task.num_classes, "label_names": list(task.label_names)}
    for key in ("merge_ratio", "max_length", "dropout", "pool_bin"):  # the head is new either way
        if getattr(settings, key) is not None:
            overrides[key] = getattr(settings, key)
    pooling = settings.pooling
    if pooling == "auto":
        pooling = default_pooling(train) if train is not None else "cls"
    if pooling is not None:
        overrides.update(pooling=pooling, cls_token=pooling == "cls")
        if pooling in SIZED_POOLINGS and train is not None:
            overrides["pool_length"] = int(train.lengths.max())
    check_pool_bin(overrides.get("pooling", saved.pooling if saved is not None else preset_config(preset).pooling),
                   settings.pool_bin)
    if settings.conv_stem is not None:
        if saved is not None and settings.conv_stem != saved.conv_stem:
            raise ValueError(f"conv_stem {settings.conv_stem} asked for, but the checkpoint {model} was trained with "
                             f"conv_stem {saved.conv_stem}: the stem is part of the encoder")
        overrides["conv_stem"] = settings.conv_stem
    if model is not None:
        # the head is always new, also on a fine-tuned model; the decoders of a pretraining checkpoint are dropped;
        # a CLS token the checkpoint lacks is new too (one it has is kept, whatever the head)
        fresh = ("classifier.",)
        if saved.cls_token:
            overrides["cls_token"] = True
        elif overrides.get("cls_token"):
            fresh += ("mergedna.cls",)
        return (MergeDNAForSequenceClassification.from_pretrained(model, fresh=fresh, **overrides),
                {"checkpoint": str(Path(model).resolve()), "init": "pretrained"})
    return MergeDNAForSequenceClassification(preset_config(preset, **overrides)), {"preset": preset, "init": "random"}


def apply_lora(model: MergeDNAForSequenceClassification, rank: int, alpha: float | None = None,
               dropout: float = 0.0):
    """Wrap ``model`` with LoRA adapters of ``rank`` on :data:`LORA_TARGETS` (``peft``); every
    other weight is frozen except the classification head. Returns the ``PeftModel``; its
    ``merge_and_unload()`` gives back a plain classifier with the adapters folded in."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, lora_dropout=dropout,
                     target_modules=LORA_TARGETS, bias="none")
    wrapped = get_peft_model(model, cfg)
    for param in [*model.classifier.parameters(), *model.pooler.parameters()]:
        param.requires_grad_(True)
    if model.config.cls_token:
        model.mergedna.cls.requires_grad_(True)
    return wrapped


@torch.no_grad()
def evaluate(model, loader, split: LabelledSplit, precision: str = "auto", name: str = "eval",
             progress: bool = False) -> dict:
    """Metrics of ``model`` on ``split`` (the split ``loader`` was built from, before any length
    policy). Chunk logits are averaged per sequence. Returns :func:`classification_metrics` plus
    ``loss`` and ``probs`` (n, C) in row order of ``split``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, parents = [], []
    for batch in tqdm(loader, desc=name, leave=False, disable=not progress):
        inputs = to_device(batch, device)
        with autocast(precision, device):
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits.append(out.logits.float().cpu())
        parents.append(batch["parent"])
    model.train(was_training)
    per_seq = average_chunk_logits(torch.cat(logits), torch.cat(parents), num_parents=len(split))  # (n, C)
    labels = torch.from_numpy(split.labels)
    probs = F.softmax(per_seq.double(), dim=-1).numpy()
    return {**classification_metrics(split.labels, probs), "loss": float(F.cross_entropy(per_seq, labels)),
            "probs": probs}


@dataclass
class FitProgress:
    """What :func:`fit`'s loop carries from step to step; saved whole (with the weights, optimizer and schedule)
    in the resume state, so a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on
    curve: list = dataclasses.field(default_factory=list)  # one row per dev evaluation
    best: tuple | None = None  # (step, score, dev metrics) of the best dev evaluation so far
    best_state: list | None = None  # the trainable tensors at that evaluation
    ema_state: list | None = None  # with settings.ema: the moving average of the trainable tensors
    bad: int = 0  # evaluations since the best, not counting those at the class prior
    at_prior: int = 0  # dev evaluations in a row that predicted a single class
    aux_weight: float = 0.0  # the auxiliary masked loss's weight now (0: off or standing by)
    switched_at: int | None = None  # the step at which the standby masked loss was switched on
    stopped_early: bool = False
    out_of_time: bool = False  # settings.max_time was spent
    seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0

    def record(self, dev: dict, losses: list, aux_losses: list, steps_per_epoch: int, settings: FinetuneSettings,
               trainable, standby: bool, lr: float) -> bool:
        """Add the dev evaluation of this step (``lr``: the learning rate now); update best, patience and (with a
        ``standby`` masked loss) the switch. Returns whether dev improved (ties keep the first)."""
        self.curve.append({"step": self.step, "epoch": round(self.step / steps_per_epoch, 3),
                           "train_loss": float(np.mean(losses)), "dev": dev, "lr": lr,
                           **({"train_mlm_loss": float(np.mean(aux_losses))} if aux_losses else {})})
        score = dev[settings.select_metric]
        score = -math.inf if score is None else score
        one_class = dev.get("predicted_classes", 2) == 1
        improved = self.best is None or score > self.best[1]
        if improved:
            self.best, self.bad = (self.step, score, dev), 0
            self.best_state = [p.detach().clone() for _, p in trainable]
        elif not one_class:  # a run still at the class prior has not started to learn: no patience used up
            self.bad += 1
            self.stopped_early = settings.patience is not None and self.bad >= settings.patience
        self.at_prior = self.at_prior + 1 if one_class else 0
        if standby and self.aux_weight == 0 and self.at_prior >= COLLAPSE_EVALS:
            self.aux_weight, self.switched_at = settings.mlm_on_collapse, self.step  # stuck: give it a signal
        return improved


def ema_update(average: list, params: list, decay: float, step: int) -> None:
    """Move ``average`` (tensors) towards ``params`` after optimizer step ``step`` (1, 2, ...): the decay is warmed
    up as ``min(decay, (1 + step) / (10 + step))``, so early averages are not held back by the initial weights."""
    rate = 1 - min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(average, [p.detach() for p in params], rate)


@contextlib.contextmanager
def holding(params: list, values: list | None):
    """Within the block ``params`` hold ``values`` (e.g. their moving average); their own values come back after.
    ``values`` None: nothing changes."""
    if values is None:
        yield
        return
    with torch.no_grad():
        kept = [p.detach().clone() for p in params]
        torch._foreach_copy_([p.data for p in params], values)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], kept)


def fit(model, train_loader, evaluate_dev, settings: FinetuneSettings, progress: bool = True,
        on_best=None, aux: MaskedModellingLoss | None = None, state_path: str | os.PathLike | None = None) -> dict:
    """Train ``model`` (its parameters with ``requires_grad``) on ``train_loader``; every
    ``eval_every`` steps and at the end call ``evaluate_dev(model) -> metrics``, and
    ``on_best(model, step, dev)`` when the dev score improves (to checkpoint it). Restores the
    trainable weights of the best dev evaluation (first one wins ties). ``aux`` (a :class:`MaskedModellingLoss`)
    is added at ``settings.mlm_weight`` from the first step; with ``mlm_weight`` 0 it stands by, and
    :data:`COLLAPSE_EVALS` dev evaluations in a row that predict a single class switch it on at
    ``settings.mlm_on_collapse`` from the next step (the step is returned as ``mlm_switched_at``). With
    ``state_path``, the whole training state (:class:`FitProgress` and the weights, optimizer and schedule) is
    written there atomically after each dev evaluation, and a state found there at the start is resumed: the
    run then continues exactly as if it had not stopped (same batches, dropout draws and masks). Returns the
    history: ``dev_curve``, ``best_step``, ``best_dev``, ``steps``, ``stopped_early``, the ``lr`` used, and the
    cost: ``epochs_done``, ``sequences_seen``, ``train_seconds`` (training steps only),
    ``eval_seconds`` (dev evaluations) and training ``sequences_per_s``.

    ``settings.max_time`` (seconds of training and dev evaluation, resumed parts included) bounds the run by
    time as ``epochs``/``max_steps`` bound it by steps: warm-up and decay follow whichever budget is further
    along (the schedule's step is ``max(step, total × elapsed / max_time)``), so a run cut by its time still
    ends its decay, and the run ends with a dev evaluation when the time is spent (``out_of_time``). Such a run
    depends on the machine's speed: its ``steps`` are recorded, not reproducible to the step elsewhere.
    Batches go to the model's device."""
    device = next(model.parameters()).device
    steps_per_epoch = len(train_loader)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    eval_every = settings.eval_every or max(1, min(steps_per_epoch, math.ceil(total / 10)))
    warmup = settings.warmup_steps if settings.warmup_steps is not None else round(settings.warmup_ratio * total)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    own = {id(p) for _, p in trainable}  # the auxiliary decoders train too, but are not the model
    stepped = trainable + ([] if aux is None else [(f"aux.{n}", p) for n, p in aux.named_parameters()
                                                   if p.requires_grad and id(p) not in own])
    lr = settings.lr if settings.lr is not None else DEFAULT_LR["pretrained"]
    scales = head_lr_scales(model, settings.head_lr_scale)
    optimizer = adamw(param_groups(stepped, settings.weight_decay, lr, scales), lr=lr)
    run = FitProgress(aux_weight=settings.mlm_weight if aux is not None else 0.0)

    def elapsed() -> float:  # training and dev evaluation so far, the stopped part of a resumed run included
        return run.train_seconds + run.eval_seconds + time.perf_counter() - tick

    def schedule_step(step: int) -> float:  # by steps, or by time under max_time: whichever is further along
        if settings.max_time is None or step == 0:
            return step
        return max(step, total * min(1.0, elapsed() / settings.max_time))

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(schedule_step(s), warmup, total, settings.schedule))
    resumed, rng = {}, None
    if state_path is not None and Path(state_path).is_file():
        saved = load_fit_state(state_path, stepped, optimizer, scheduler, total)
        run = FitProgress(**{f.name: saved[f.name] for f in dataclasses.fields(FitProgress) if f.name in saved})
        run.best, rng = tuple(run.best), saved["torch_rng"]
        if saved.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        resumed = {"resumed_at_step": run.step, "resumed_seconds": round(run.train_seconds + run.eval_seconds, 2)}
    params = [p for _, p in trainable]
    if settings.ema and run.ema_state is None:
        run.ema_state = [p.detach().clone() for p in params]
    averaged = run.ema_state if settings.ema else None  # a state saved with --ema, resumed without it: raw weights
    losses, aux_losses, tick = [], [], time.perf_counter()
    bar = tqdm(total=total, initial=run.step, desc="fine-tune", disable=not progress, dynamic_ncols=True)
    model.train()
    while run.step < total and not run.stopped_early and not run.out_of_time:
        train_loader.batch_sampler.set_epoch(run.epoch, run.batch_in_epoch)
        batches = iter(train_loader)  # draws a seed from torch's global generator, as it did in the stopped run
        if rng is not None:           # before its state was saved: so the saved state is set after the draw
            torch.set_rng_state(rng)
            rng = None
        for run.batch_in_epoch, batch in enumerate(batches, start=run.batch_in_epoch + 1):
            run.seen += len(batch["labels"])
            batch = to_device(batch, device)
            with autocast(settings.precision, device):
                loss = task_loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         labels=batch["labels"]).loss
                if run.aux_weight > 0:
                    masked = aux(batch["input_ids"], batch["attention_mask"], run.step)
                    aux_losses.append(masked.item())
                    loss = task_loss + run.aux_weight * masked
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {run.step + 1}")
            loss.backward()
            if settings.clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in stepped], settings.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            run.step += 1
            if averaged is not None:
                ema_update(averaged, params, settings.ema, run.step)
            losses.append(task_loss.item())  # the task's loss; the auxiliary one is logged apart
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            run.out_of_time = settings.max_time is not None and elapsed() >= settings.max_time
            if run.step % eval_every == 0 or run.step == total or run.out_of_time:
                now = time.perf_counter()
                run.train_seconds += now - tick
                with holding(params, averaged):  # with --ema, dev sees (and best keeps) the average
                    dev = {k: v for k, v in evaluate_dev(model).items() if k != "probs"}
                    tick = time.perf_counter()
                    run.eval_seconds += tick - now
                    if run.record(dev, losses, aux_losses, steps_per_epoch, settings, trainable, aux is not None,
                                  scheduler.get_last_lr()[0]) \
                            and on_best is not None:
                        on_best(model, run.step, dev)
                losses, aux_losses = [], []
                shown = dev[settings.select_metric]
                bar.set_postfix(loss=f"{run.curve[-1]['train_loss']:.4f}",
                                **{f"dev_{settings.select_metric}": "n/a" if shown is None else f"{shown:.3f}"})
                if state_path is not None and run.step < total and not run.stopped_early and not run.out_of_time:
                    save_fit_state(state_path, stepped, optimizer, scheduler, total=total, **vars(run))
                    tick = time.perf_counter()  # writing the state is neither training nor evaluation
            if run.step >= total or run.stopped_early or run.out_of_time:
                break
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    bar.close()
    run.train_seconds += time.perf_counter() - tick
    with torch.no_grad():
        for (_, p), saved in zip(trainable, run.best_state):
            p.copy_(saved)
    return {"dev_curve": run.curve, "best_step": run.best[0], "best_dev": run.best[2], "steps": run.step,
            "total_steps": total, "eval_every": eval_every, "warmup_steps": warmup, "stopped_early": run.stopped_early,
            "out_of_time": run.out_of_time, "steps_per_epoch": steps_per_epoch, "lr": lr, "epochs_done": round(run.step / steps_per_epoch, 3),
            "sequences_seen": run.seen, "train_seconds": round(run.train_seconds, 2),
            "eval_seconds": round(run.eval_seconds, 2), "sequences_per_s": round(run.seen / max(run.train_seconds, 1e-9), 1),
            "mlm_switched_at": run.switched_at, **resumed}


def head_lr_scales(model, rule: str) -> dict[str, float]:
    """Full parameter names of ``model`` (also under a LoRA wrapper) -> lr multiple, from its pooler."""
    return {f"{name}.{param}": scale for name, module in model.named_modules() if isinstance(module, SequencePooler)
            for param, scale in module.lr_scales(rule).items()}


def training_warnings(history: dict) -> list[str]:
    """What a reader of the result must know before trusting it: that the auxiliary masked loss was switched
    on part-way (``mlm_switched_at``: the run's recipe changed there), and that every dev evaluation
    predicted a single class, i.e. the model never left the class prior (the collapse of from-scratch
    runs on GUE, results/finetune_small_scratch/diagnostic_collapse): its MCC of 0 is then not a score."""
    curve, notes = history.get("dev_curve") or [], []
    switched = history.get("mlm_switched_at")
    if switched is not None:
        notes.append(f"dev predicted a single class at step {switched}: the auxiliary masked loss was switched on "
                     f"from step {switched + 1} (--mlm-on-collapse; 0 turns this off)")
    if curve and all(row["dev"].get("predicted_classes") == 1 for row in curve):
        hint = ("more steps or a pretrained --model" if switched is not None else
                "--mlm-weight 1 (a masked loss on the task's own sequences), a pretrained --model, or more steps")
        notes.append(f"the model predicted a single class at all {len(curve)} dev evaluations: it did not learn "
                     f"(loss stayed near the class prior). Try {hint}; see docs/finetuning.md, 'When the "
                     "model does not learn'")
    return notes


def plot_dev_curve(result: dict, path: str | os.PathLike) -> None:
    """PNG of the dev selection metric (and accuracy) and the train loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, metric = result["dev_curve"], result["settings"]["select_metric"]
    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in dict.fromkeys((metric, "accuracy")):
        ax.plot(steps, [np.nan if c["dev"][key] is None else c["dev"][key] for c in curve], marker="o",
                label=f"dev {key}")
    ax.axvline(result["best_step"], color="grey", linestyle="--", label=f"best step {result['best_step']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("dev metric")
    loss_ax = ax.twinx()
    loss_ax.plot(steps, [c["train_loss"] for c in curve], color="tab:red", alpha=0.5, label="train loss")
    loss_ax.set_ylabel("train loss")
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title(f"{result['task']['name']} seed {result['seed']}: test {metric} "
                 f"{result['test'][metric] if result['test'][metric] is not None else float('nan'):.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _write_predictions(path: Path, split: LabelledSplit, probs: np.ndarray, label_names) -> None:
    with open(path, "w") as fh:
        fh.write("\t".join(["name", "label", "prediction", *(f"p_{n}" for n in label_names)]) + "\n")
        for i, (name, label, p) in enumerate(zip(split.names, split.labels, probs)):
            fh.write("\t".join([name, label_names[label], label_names[int(p.argmax())],
                                *(f"{x:.6g}" for x in p)]) + "\n")


def train_selected_on_dev(task: Task, splits: dict[str, LabelledSplit], model, preset, seed: int,
                          settings: FinetuneSettings, progress: bool = True, on_best=None, state_path=None,
                          device: torch.device | str = "cpu"):
    """Seed, build the classifier on ``device`` (LoRA-wrapped when asked), :func:`fit` it on ``splits["train"]``
    selecting on ``splits["dev"]`` (saving and resuming its state at ``state_path`` when given). Returns ``(classifier with the best-on-dev weights, adapters
    merged; source notes; fit history; trainable parameter count)``. Test is never touched."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    classifier, source = build_model(task, model, preset, settings, splits["train"])
    classifier.to(device)
    net = apply_lora(classifier, settings.lora_rank, settings.lora_alpha, settings.lora_dropout) \
        if settings.lora_rank > 0 else classifier
    if settings.compile:  # in place: parameter names and the saved checkpoint are unchanged
        apply_block_options(net, compile=True)
    eval_bs = settings.eval_batch_size or 2 * settings.batch_size
    train_loader = make_dataloader(splits["train"], settings.batch_size, classifier.config.max_length,
                                   settings.length_policy, shuffle=True, seed=seed)
    dev_loader = make_dataloader(splits["dev"], eval_bs, classifier.config.max_length, settings.length_policy,
                                 shuffle=False)
    if settings.lr is None:
        settings = dataclasses.replace(settings, lr=DEFAULT_LR[source["init"]])
    aux = None
    if settings.mlm_weight > 0:
        aux = MaskedModellingLoss(classifier, seed, model).to(device)
    elif settings.mlm_on_collapse > 0:  # on standby, built without moving torch's generator: a run that never
        with torch.random.fork_rng(devices=[]):  # switches it on is the run without it, dropout draws included
            aux = MaskedModellingLoss(classifier, seed, model).to(device)
    history = fit(net, train_loader,
                  lambda m: evaluate(m, dev_loader, splits["dev"], settings.precision, "dev"), settings, progress,
                  on_best=on_best, aux=aux, state_path=state_path)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if settings.lora_rank > 0:
        classifier = net.merge_and_unload()
    return classifier, source, history, trainable


def sweep_grid(init: str, settings: FinetuneSettings, lora_ranks=None, poolings=None) -> list[dict]:
    """The ``--sweep`` grid (docs/method.md §8, issue 14): peak lr from :data:`SWEEP_LRS` for the init, weight
    decay {0, 0.01}, LoRA ranks ``lora_ranks`` (default: the settings' own rank only) and sequence heads
    ``poolings`` (default: the settings' own head only; no head wins on every task, results/position_heads)."""
    ranks = [settings.lora_rank] if lora_ranks is None else list(lora_ranks)
    heads = [{}] if poolings is None else [{"pooling": p} for p in poolings]
    return [{"lr": lr, "weight_decay": wd, "lora_rank": r, **head}
            for head in heads for r in ranks for lr in SWEEP_LRS[init] for wd in SWEEP_WEIGHT_DECAYS]


def finetune(task, out: str | os.PathLike | None = None, *, model: str | os.PathLike | None = None,
             preset: str | None = None, layout: str = "auto", seed: int = 0, command: str | None = None,
             progress: bool = True, save_model: bool = True, overwrite: bool = False, resume: bool = False,
             task_options: dict | None = None, device: str | torch.device | None = None,
             baselines=(), sweep: bool = False, sweep_lora_ranks=None, sweep_poolings=None, **settings) -> dict:
    """Fine-tune on ``task`` (a :class:`Task` or a path read with ``layout``) and evaluate once on test.

    With ``out``, first claims it as this run's folder and writes ``run.json`` (settings, provenance;
    :func:`mergedna.runs.claim_run_dir`, ``overwrite`` deletes a run already there), saves the best-on-dev
    model to ``model/`` each time dev improves (with ``save_model``), then writes the other files of the
    module docstring. ``resume`` continues the unfinished run in ``out`` exactly where its last dev evaluation
    left it (its :data:`FIT_STATE`; the same settings are required), or returns the metrics of a finished one.
    ``task_options`` go to the task loader (e.g. ``sequence_column``). ``device``: where the model trains
    (:func:`pick_device`; default CUDA where there is one); precision ``auto`` is resolved for it, and
    ``metrics.json`` records both. The baselines train on the CPU.
    ``settings`` are :class:`FinetuneSettings` fields. Returns what ``out/metrics.json`` holds
    (when ``out`` is given): task and split notes, model source and config, settings, seed, run
    metadata (:func:`run_metadata`), ``dev_curve``, ``best_step``, ``best_dev``, ``test`` metrics
    and ``test_evaluations`` (always 1). ``baselines`` (names of :mod:`mergedna.baselines`) also
    trains those references on the same splits with the same seed: ``result["baselines"][name]``
    (test and best-dev metrics, wall time), the full records in ``out/baselines/<name>.json``.

    ``sweep``: train one model per point of :func:`sweep_grid` (same seed and splits), keep the one
    with the best dev selection metric (the first on ties) and evaluate only that one on test;
    ``result["sweep"]`` lists every trial's settings, dev metrics and cost.
    """
    if (sweep_lora_ranks is not None or sweep_poolings is not None) and not sweep:
        raise ValueError("sweep_lora_ranks and sweep_poolings choose what --sweep varies: they need sweep=True")
    if resume and (out is None or sweep):
        raise ValueError("resume continues the one model of a run folder: it needs out and no sweep")
    given = settings
    settings = FinetuneSettings(**settings)
    device = pick_device(device)
    if device.type != "cpu":  # "auto" means the fastest precision on the device that trains, not on the host
        settings.precision = resolve(given.get("precision", "auto"), device)
    started = time.time()
    if out is not None:
        source = {"task": task if not isinstance(task, Task) else task.name, "model": model, "preset": preset,
                  "layout": layout, "seed": seed, "task_options": task_options, **dataclasses.asdict(settings)}
        claim_run_dir(out, "finetune", json.loads(json.dumps(source, default=str)), resume=resume,
                      overwrite=overwrite, meta=run_metadata(command))
        if resume and (Path(out) / "metrics.json").is_file():  # finished: nothing to continue
            return json.loads((Path(out) / "metrics.json").read_text())
    if not isinstance(task, Task):
        task = load_task(task, layout, **(task_options or {}))
    splits, notes = prepare_splits(task, settings)
    init = "pretrained" if model is not None else "random"
    points = sweep_grid(init, settings, sweep_lora_ranks, sweep_poolings) if sweep else [{}]

    def save_best(net, step, dev):  # a failure late in the run keeps the best model so far
        best = copy.deepcopy(net).merge_and_unload() if hasattr(net, "merge_and_unload") else net
        best.save_pretrained(Path(out) / "model")

    on_best = save_best if out is not None and save_model and len(points) == 1 else None
    trials, best = [], None
    for point in points:
        trial_settings = dataclasses.replace(settings, **point)
        classifier, source, history, trainable = train_selected_on_dev(
            task, splits, model, preset, seed, trial_settings, progress, on_best,
            state_path=Path(out) / FIT_STATE if out is not None and len(points) == 1 else None, device=device)
        score = history["best_dev"][settings.select_metric]
        score = -math.inf if score is None else score
        trials.append({**point, "best_dev": history["best_dev"], "best_step": history["best_step"],
                       "steps": history["steps"], "train_seconds": history["train_seconds"]})
        if best is None or score > best[0]:
            best = (score, point, classifier, source, history, trainable)
        del classifier
    _, point, classifier, source, history, trainable = best
    test = evaluate(classifier, make_dataloader(splits["test"], settings.eval_batch_size or 2 * settings.batch_size,
                                                classifier.config.max_length, settings.length_policy, shuffle=False),
                    splits["test"], settings.precision, "test", progress)
    probs = test.pop("probs")
    seconds = round(time.time() - started + history.get("resumed_seconds", 0.0), 1)  # + the stopped part's training
    reference = {}
    if baselines:
        from .baselines import run_baseline

        for name in baselines:
            reference[name] = run_baseline(name, splits, task.num_classes, seed)
    lora_rank = point.get("lora_rank", settings.lora_rank)
    result = {
        "task": {"name": task.name, "root": task.root, "metric": task.metric, "label_names": list(task.label_names),
                 "sizes": {k: len(v) for k, v in splits.items()}, **notes},
        "model": {**source, "config": classifier.config.to_dict(), "parameters": classifier.num_parameters(),
                  "trainable_parameters": trainable, "mode": "lora" if lora_rank > 0 else "full"},
        "settings": dataclasses.asdict(FinetuneSettings(**given)), "seed": seed, "device": str(device),
        "precision": settings.precision, **run_metadata(command), **history,
        "test": test, "test_evaluations": 1, "seconds": seconds, "warnings": training_warnings(history)}
    if sweep:
        result["sweep"] = {"selected": point, "select_metric": settings.select_metric, "trials": trials}
    if reference:
        result["baselines"] = {n: {k: r[k] for k in ("label", "test", "best_dev", "seconds")}
                               for n, r in reference.items()}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if save_model:
            classifier.save_pretrained(out / "model")
        with atomic_path(out / "test_predictions.tsv") as tmp:
            _write_predictions(tmp, splits["test"], probs, task.label_names)
        plot_dev_curve(result, out / "dev_curve.png")
        for name, r in reference.items():
            write_json_atomic(out / "baselines" / f"{name}.json", {**r, "seed": seed, **run_metadata(command)})
        write_json_atomic(out / "metrics.json", result)
        (out / FIT_STATE).unlink(missing_ok=True)  # after metrics.json: a kill in between leaves a finished run
    return result
