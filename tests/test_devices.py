"""Tests that mean something on an accelerator, run on every device present: the CPU here, and CUDA
where there is one (``scripts/gpu_check.sh`` runs this file on the GPU machine)."""

import json

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
def test_gradients_on_device_match_cpu(chr20, device):
    """The three-pass step in fp32 gives the same gradients on the device as on the CPU."""
    grads = {}
    for dev in ("cpu", device):
        torch.manual_seed(0)
        model = MergeDNAForPretraining(preset("tiny")).to(dev)
        MergeDNAPretrainer(model, ObjectiveConfig())(batch_from(chr20, [256, 200]).to(dev),
                                                     step_generator(0, 3))["loss"].backward()
        grads[dev] = {n: p.grad.cpu() for n, p in model.named_parameters()}
    for name, g in grads["cpu"].items():
        assert torch.allclose(g, grads[device][name], atol=1e-4, rtol=1e-3), name


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
