"""Tests that mean something on an accelerator, run on every device present: the CPU here, and CUDA
where there is one (``scripts/gpu_check.sh`` runs this file on the GPU machine)."""

import json

import numpy as np
import pytest
import torch

from mergedna_testing import FIXTURES, batch_from
from mergedna.config import preset
from mergedna.model import MergeDNAForPretraining
from mergedna.objectives import MergeDNAPretrainer, ObjectiveConfig, step_generator
from mergedna.training import memory
from mergedna.training.checkpoints import checkpoint_dirs
from mergedna.training.trainer import TrainConfig, pretrain

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FASTA = str(FIXTURES / "chr20_slice.fa")
VAL = "20:59001-61000"


@pytest.mark.parametrize("device", DEVICES)
def test_pretrain_and_resume_on_device(tmp_path, device):
    out = tmp_path / "run"
    base = dict(fasta=[FASTA], out=str(out), preset="tiny", window=256, batch_size=2, warmup=1, lr=2e-3, val=VAL,
                val_windows=2, val_every=2, ckpt_every=2, log_every=1, progress=False, device=device)
    pretrain(TrainConfig(steps=2, **base))
    pretrain(TrainConfig(steps=4, resume=True, **base))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000002", "step-00000004"]


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_on_device_match_cpu(chr20, device, monkeypatch):
    """The three-pass step in fp32 gives the CPU's gradients on the device, for the same masks. The objective
    draws its noise on the device's own generator (seeded from the step's CPU one), which gives other masks
    than the CPU's; the test draws on the CPU for both (``device_generator`` made the identity), as the first
    CUDA run of this test showed (2026-11-29, H200: it compared two different masks and failed)."""
    import mergedna.objectives as objectives

    monkeypatch.setattr(objectives, "device_generator", lambda gen, device: gen)
    grads = {}
    for dev in ("cpu", device):
        torch.manual_seed(0)
        model = MergeDNAForPretraining(preset("tiny")).to(dev)
        MergeDNAPretrainer(model, ObjectiveConfig())(batch_from(chr20, [256, 200]).to(dev),
                                                     step_generator(0, 3))["loss"].backward()
        grads[dev] = {n: p.grad.cpu() for n, p in model.named_parameters()}
    for name, g in grads["cpu"].items():  # relative to each tensor's norm: kernels sum in other orders
        assert (g - grads[device][name]).norm() <= 1e-3 * g.norm() + 1e-6, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.max_memory_allocated")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_estimate_bounds_cuda_peak(chr20, checkpointing):
    """The start-up estimate against the allocator's peak of one bf16 step of small at 4 kb."""
    from mergedna.training.trainer import apply_block_options

    cfg, N, B = preset("small"), 4096, 2
    torch.manual_seed(0)
    model = MergeDNAForPretraining(cfg).cuda()
    apply_block_options(model, activation_checkpointing=checkpointing)
    objective = MergeDNAPretrainer(model, ObjectiveConfig(ratio_std=0.0))
    ids = torch.randint(0, 4, (B, N)).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = objective(ids, step_generator(0, 0))["loss"]
    after_forward = torch.cuda.memory_allocated() - before  # what backward will need
    loss.backward()
    predicted = memory.activation_bytes(cfg, N, B, bf16=True, checkpointing=checkpointing)
    assert 0.7 < predicted / after_forward < 1.5, (predicted, after_forward, torch.cuda.max_memory_allocated())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pooling", ["mean", "cls", "attention", "mean_flatten"])
def test_classifier_on_device_matches_cpu(chr20, device, pooling):
    """Every sequence head gives the CPU's logits on the device (fp32), padding included. Tolerance: on an
    H200 (2026-11-29) the logits of this random-init tiny model differed from the CPU's by up to 2.8e-4."""
    import copy

    from mergedna.heads import MergeDNAForSequenceClassification

    torch.manual_seed(0)
    cfg = preset("tiny", num_labels=3, pooling=pooling, cls_token=pooling == "cls", pool_length=100)
    model = MergeDNAForSequenceClassification(cfg).eval()
    ids = batch_from(chr20, [100, 73, 41])
    with torch.no_grad():
        ref = model(ids).logits
        out = copy.deepcopy(model).to(device)(ids.to(device)).logits.cpu()
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_finetune_runs_and_resumes_on_device(tmp_path, monkeypatch, device):
    """A fine-tuning run on the device (the standby masked loss switches on part-way, so its decoders train
    there too), killed at its third dev evaluation and resumed, follows the run that never stopped; the
    device and the precision it used are recorded. Exact on the CPU; on CUDA within float tolerance
    (atomic adds in some backward kernels are not bit-reproducible)."""
    from mergedna.finetune import finetune
    from mergedna.runs import FIT_STATE

    from mergedna_testing import RESUMABLE_RUN, Killed, die_at_dev_evaluation

    task = FIXTURES / "tasks" / "gue" / "splice3"
    run = dict(RESUMABLE_RUN, precision="fp32", device=device)
    whole = finetune(task, tmp_path / "whole", **run)
    assert whole["device"].startswith(device) and whole["precision"] == "fp32" and whole["mlm_switched_at"] == 4
    die_at_dev_evaluation(monkeypatch, 3)
    with pytest.raises(Killed):
        finetune(task, tmp_path / "cut", **run)
    monkeypatch.undo()
    assert (tmp_path / "cut" / FIT_STATE).is_file()
    resumed = finetune(task, tmp_path / "cut", resume=True, **run)
    assert resumed["resumed_at_step"] == 4 and resumed["steps"] == whole["steps"] == 8
    losses = [[row["train_loss"] for row in r["dev_curve"]] for r in (whole, resumed)]
    if device == "cpu":
        assert losses[0] == losses[1] and resumed["test"] == whole["test"]
    else:
        assert np.allclose(losses[0], losses[1], rtol=1e-3, atol=1e-4)
