"""Pretraining and fine-tuning step the same optimiser with the same weight-decay groups
(mergedna.training.optim): matrices decay; norms, biases and the embedding table do not."""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mergedna_testing import FIXTURES
from mergedna.config import preset
from mergedna.data.task_batching import make_dataloader
from mergedna.data.tasks import load_gue_task
from mergedna.finetune import FinetuneSettings, fit
from mergedna.heads import MergeDNAForSequenceClassification
from mergedna.training.trainer import TrainConfig, setup_run

EMBED = "mergedna.local_encoder.embed.weight"


def decay_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_finetuning_and_pretraining_decay_the_same_encoder_parameters(tmp_path):
    run = setup_run(TrainConfig(fasta=[str(FIXTURES / "chr20_slice.fa")], out=str(tmp_path / "pt"), preset="tiny",
                                window=256, batch_size=2, steps=1, val="20:59001-61000", weight_decay=0.1,
                                progress=False, bf16=False))
    pretraining = decay_by_name(run.model, run.optimizer)  # the optimiser the loop steps

    torch.manual_seed(0)
    model = MergeDNAForSequenceClassification(preset("tiny", num_labels=3))
    stepped = []  # the optimiser fit steps, whichever way it is built
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: stepped.append(opt))
    try:
        loader = make_dataloader(load_gue_task(FIXTURES / "tasks" / "gue" / "splice3")["train"], 4, 1024)
        fit(model, loader, lambda m: {"mcc": 0.0}, FinetuneSettings(max_steps=1, eval_every=1, weight_decay=0.3,
                                                                  precision="fp32"), progress=False)
    finally:
        hook.remove()
    assert len(stepped) == 1
    finetuning = decay_by_name(model, stepped[0])

    assert pretraining[EMBED] == finetuning[EMBED] == 0.0
    shared = sorted(n for n in finetuning if n.startswith("mergedna."))
    assert shared and set(shared) <= set(pretraining)
    assert {n for n in shared if pretraining[n] > 0} == {n for n in shared if finetuning[n] > 0}
    assert {pretraining[n] for n in shared} == {0.0, 0.1} and {finetuning[n] for n in shared} == {0.0, 0.3}


def test_the_flatten_layer_steps_at_a_scaled_lr():
    """Adam moves a layer's output in proportion to its fan-in: the flatten head's wide layer (pool_length × 16
    inputs) gets lr × hidden / fan-in (or its square root, the default); every other parameter the peak lr."""
    loader = make_dataloader(load_gue_task(FIXTURES / "tasks" / "gue" / "splice3")["train"], 4, 1024)
    for pooling, rule in (("flatten", "fan_in"), ("mean_flatten", "sqrt_fan_in"), ("mean_flatten", "none"),
                          ("mean", "fan_in")):
        settings = FinetuneSettings(max_steps=1, eval_every=1, lr=1e-3, warmup_steps=0, precision="fp32",
                                    head_lr_scale=rule)
        torch.manual_seed(0)
        model = MergeDNAForSequenceClassification(preset("tiny", num_labels=3, pooling=pooling, pool_length=60))
        stepped = []
        hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: stepped.append(opt))
        try:
            fit(model, loader, lambda m: {"mcc": 0.0}, settings, progress=False)
        finally:
            hook.remove()
        name_of = {id(p): n for n, p in model.named_parameters()}
        lr_of = {name_of[id(p)]: g["initial_lr"] for g in stepped[0].param_groups for p in g["params"]}
        ratio = 64 / (60 * 16)
        expected = {"fan_in": 1e-3 * ratio, "sqrt_fan_in": 1e-3 * ratio ** 0.5, "none": 1e-3}[rule]
        expected = None if pooling == "mean" else expected
        assert {lr for n, lr in lr_of.items() if n != "pooler.out.weight"} == {1e-3}
        assert lr_of.get("pooler.out.weight") == (None if expected is None else pytest.approx(expected))
