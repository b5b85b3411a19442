"""The pretraining loop: outputs, exact resume after SIGKILL, NaN handling, DDP parity."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mergedna_testing import FIXTURES, batch_from
from mergedna.model import MergeDNAForPretraining
from mergedna.objectives import MergeDNAPretrainer
from mergedna.precision import resolve
from mergedna.training.checkpoints import checkpoint_dirs
from mergedna.training.trainer import TrainConfig, TrainingDiverged, lr_at, pretrain

FASTA = str(FIXTURES / "chr20_slice.fa")
VAL = "20:59001-61000"  # the first fixture record is held out


def small_run(out, **kw) -> TrainConfig:
    base = dict(fasta=[FASTA], out=str(out), preset="tiny", window=256, batch_size=2, steps=6, warmup=2, lr=2e-3,
                val=VAL, val_windows=2, val_every=3, ckpt_every=2, log_every=1, progress=False)
    return TrainConfig(**{**base, **kw})


def train_rows(out):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["split"] == "train"}


def test_run_writes_model_metrics_plot_and_checkpoints(tmp_path):
    summary = pretrain(small_run(tmp_path / "run", keep_last=2))
    out = tmp_path / "run"
    assert summary["steps_done"] == 6
    assert (out / "curves.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val"}
    assert all(k in rows[0] for k in ("loss", "mtr", "latent_mtr", "amtm", "amtm_acc", "mtr_acc", "bp_per_s", "lr"))
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000004", "step-00000006"]  # last 2 kept
    model = MergeDNAForPretraining.from_pretrained(out / "model")
    assert model.config.hidden_size == 64
    MergeDNAForPretraining.from_pretrained(checkpoint_dirs(out)[-1])  # checkpoints load the same way


def test_activation_checkpointing_gives_the_same_gradients(chr20):
    from mergedna.config import preset
    from mergedna.objectives import ObjectiveConfig, step_generator
    from mergedna.training.trainer import apply_block_options

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MergeDNAForPretraining(preset("tiny"))
        apply_block_options(model, activation_checkpointing=ckpt)
        names = [n for n, _ in model.named_parameters()]
        MergeDNAPretrainer(model, ObjectiveConfig())(batch_from(chr20, [256, 200]), step_generator(0, 0))["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert names == list(grads[1])  # parameter names unchanged
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    steps = 30
    ref = tmp_path / "ref"
    pretrain(small_run(ref, steps=steps, ckpt_every=3, val_every=100))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mergedna.cli", "pretrain", "--fasta", FASTA, "--out", str(killed), "--preset", "tiny",
           "--window", "256", "--batch-size", "2", "--steps", str(steps), "--warmup", "2", "--lr", "2e-3", "--val", VAL,
           "--val-windows", "2", "--val-every", "100", "--ckpt-every", "3", "--log-every", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-00000006").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = checkpoint_dirs(killed)[-1]
    assert int(done.name.split("-")[1]) < steps, "the run finished before it could be killed"
    pretrain(small_run(killed, steps=steps, ckpt_every=3, val_every=100, resume=True))
    a, b = train_rows(ref), train_rows(killed)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert a[step]["loss"] == b[step]["loss"], f"step {step} differs after resume"
    ref_w = MergeDNAForPretraining.from_pretrained(ref / "model").state_dict()
    res_w = MergeDNAForPretraining.from_pretrained(killed / "model").state_dict()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)


def test_nan_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    real_forward = MergeDNAPretrainer.forward
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3 or calls["n"] >= 5:  # one bad step, then bad for good
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(MergeDNAPretrainer, "forward", flaky)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="step-00000006"):  # skipped steps leave weights as at step 4
        pretrain(small_run(out, steps=20, max_bad_steps=3, val_every=100))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [3, 5, 6, 7]
    # the last good checkpoint is intact and finite
    model = MergeDNAForPretraining.from_pretrained(checkpoint_dirs(out)[-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    from mergedna.config import preset
    from mergedna.objectives import ObjectiveConfig, step_generator
    from mergedna_testing import chr20_ids

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    chr20 = chr20_ids()
    model = MergeDNAForPretraining(preset("tiny"))
    ddp = torch.nn.parallel.DistributedDataParallel(MergeDNAPretrainer(model, ObjectiveConfig()))
    ids = batch_from(chr20, [256, 256, 256, 256])[2 * rank:2 * rank + 2]
    ddp(ids, step_generator(0, 7, rank))["loss"].backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out_file)
    dist.barrier()  # leave together: a rank tearing gloo down while its peer still talks can abort
    dist.destroy_process_group()


def test_two_process_ddp_gradients_match_one_process(tmp_path, chr20):
    from mergedna.config import preset
    from mergedna.objectives import ObjectiveConfig, step_generator

    out_file = tmp_path / "grads.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2)
    ddp_grads = torch.load(out_file, weights_only=True)
    torch.manual_seed(0)
    model = MergeDNAForPretraining(preset("tiny"))
    objective = MergeDNAPretrainer(model, ObjectiveConfig())
    ids = batch_from(chr20, [256, 256, 256, 256])
    for rank in range(2):  # the same global batch in one process: mean of the two halves
        (objective(ids[2 * rank:2 * rank + 2], step_generator(0, 7, rank))["loss"] / 2).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, ddp_grads[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_cli_two_processes_and_resume(tmp_path, strategy):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun not found next to the interpreter"
    out = tmp_path / strategy
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps, extra in ((2, []), (4, ["--resume"])):
        cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "mergedna.cli", "pretrain", "--fasta", FASTA,
               "--out", str(out), "--preset", "tiny", "--window", "256", "--batch-size", "2", "--steps", str(steps),
               "--val", VAL, "--val-windows", "2", "--val-every", "2", "--ckpt-every", "2", "--log-every", "1",
               "--no-progress", "--strategy", strategy, *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["meta"]["world_size"] == 2 and cfg["train"]["strategy"] == strategy
    assert cfg["train"]["bf16"] is (resolve("auto") == "bf16")  # the precision that ran, not "auto"
    assert sorted(train_rows(out)) == [1, 2, 3, 4]
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000002", "step-00000004"]
    model = MergeDNAForPretraining.from_pretrained(out / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_optimizer_is_fused_adamw_with_the_parameter_groups():
    from mergedna.config import preset
    from mergedna.training.trainer import make_optimizer

    model = MergeDNAForPretraining(preset("tiny"))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    assert opt.defaults["fused"] and not opt.defaults["foreach"]
    decay, rest = opt.param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert sum(p.numel() for g in (decay, rest) for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert model.mergedna.local_encoder.embed.weight in rest["params"]


def test_train_step_is_the_loops_step_and_its_micro_steps_are_seeded_by_index(tmp_path):
    """setup_run + train_step alone give the loss the loop logs for step 1, and that loss is the mean
    of plain forward passes over micro-batches 0 and 1 with the noise of (seed, index, rank)."""
    from mergedna.config import preset
    from mergedna.objectives import ObjectiveConfig, step_generator
    from mergedna.training.trainer import setup_run, train_step

    run = setup_run(small_run(tmp_path / "step", grad_accum=2, steps=1, bf16=False))
    result = train_step(run, 0)
    assert result.finite and not result.out_of_time
    torch.manual_seed(0)
    objective = MergeDNAPretrainer(MergeDNAForPretraining(preset("tiny")), ObjectiveConfig())
    expected = sum(objective(run.train_sampler.batch(i, 2), step_generator(0, i, 0))["loss"].detach() / 2
                   for i in range(2))
    assert float(result.loss) == float(expected)
    pretrain(small_run(tmp_path / "loop", grad_accum=2, steps=1, bf16=False))
    assert train_rows(tmp_path / "loop")[1]["loss"] == float(result.loss)


def test_time_limit_stops_after_the_step_with_a_checkpoint_and_validation(tmp_path):
    out = tmp_path / "timed"
    summary = pretrain(small_run(out, steps=50, time_limit=1e-9, val_every=100, ckpt_every=100))
    assert summary["steps_done"] == 1 and summary["stopped_by"] == "time limit of 1e-09 min"
    assert [p.name for p in checkpoint_dirs(out)] == ["step-00000001"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows] == [("train", 1), ("val", 1)]
    assert (out / "model" / "model.safetensors").is_file()
