"""Timing half of ``scripts/gpu_check.sh``: the three-pass pretraining step on one device.

    python benchmarks/gpu_check.py --out DIR [--status name=rc ...]   # on a GPU: paper, small, base at 4 kb
    python benchmarks/gpu_check.py --dry-run --out DIR                # on CPU: tiny at 256 bp, seconds

For each preset, with and without activation checkpointing: the whole training step as the trainer
runs it (``MergeDNAPretrainer`` forward at the mean ratio, backward, gradient clipping, AdamW,
``zero_grad``) under bf16 autocast where the device has it, ``--warmup`` untimed steps then the
median of ``--repeats`` timed ones (CUDA synchronised). Recorded per row: seconds per step, bases
per second, achieved FLOP/s (the :mod:`mergedna.flops` count of the step; with checkpointing the
recomputed forward is not counted, so it is the useful-work rate), utilisation against the bf16
matmul peak measured at the start of the same run (8192³ on CUDA), peak memory
(``torch.cuda.max_memory_allocated``; on CPU the saved-tensor bytes of one step) beside the
start-up estimate of :mod:`mergedna.training.memory`. A preset that runs out of memory is
recorded as such. Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` with device, driver,
torch, date and commit; ``--status`` adds the exit codes of the script's other parts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mergedna import flops
from mergedna.config import preset as make_preset
from mergedna.model import MergeDNAForPretraining
from mergedna.objectives import MergeDNAPretrainer, ObjectiveConfig, step_generator
from mergedna.precision import autocast, resolve
from mergedna.provenance import run_metadata, write_json_atomic, write_text_atomic
from mergedna.training import memory
from mergedna.training.trainer import TrainConfig, apply_block_options, make_optimizer

RATIO = ObjectiveConfig().ratio_mean


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> dict:
    """Mean TFLOP/s of ``repeats`` n×n×n products after 3 warm-ups, on random data."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - t0) / repeats
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def time_step(name: str, N: int, batch: int, device: torch.device, bf16: bool, checkpointing: bool,
              warmup: int, repeats: int) -> dict:
    cfg = make_preset(name)
    row = {"preset": name, "length": N, "batch": batch, "activation_checkpointing": checkpointing,
           "precision": "bf16" if bf16 else "fp32"}
    est = memory.estimate(cfg, N, batch, bf16, device)
    row["estimate_gib"] = {"activations": (est.activations_checkpointed if checkpointing else est.activations) / 2**30,
                           "model_state": est.model_state / 2**30}
    torch.manual_seed(0)
    model = MergeDNAForPretraining(cfg).to(device)
    apply_block_options(model, activation_checkpointing=checkpointing)
    objective = MergeDNAPretrainer(model, ObjectiveConfig())
    opt = make_optimizer(model, TrainConfig())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 4, (batch, N), generator=g).to(device)
    index = [0]

    def step():
        with autocast(bf16, device):
            loss = objective(ids, step_generator(0, index[0]), ratio=RATIO)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        index[0] += 1

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # a previous row's (or out-of-memory row's) blocks
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        for _ in range(warmup):
            step()
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err).splitlines()[0]}"
        return row
    finally:
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            row["baseline_memory_gib"] = base / 2**30
    if device.type != "cuda":  # what backward keeps, measured directly
        with autocast(bf16, device):
            saved, parts = memory.saved_bytes(lambda: objective(ids, step_generator(0, 0), ratio=RATIO),
                                              exclude=model.parameters())
        row["saved_activations_gib"] = saved / 2**30
    seconds = statistics.median(times)
    total = flops.pretraining_step(cfg, N, batch, ratio=RATIO)["total"]
    row.update(seconds=seconds, times=times, bp_per_s=batch * N / seconds, step_flops=total,
               achieved_tflops=total / seconds / 1e12)
    del model, objective, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def driver() -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [f"# GPU check ({'dry run on CPU' if res['dry_run'] else res['device']['name']})", "",
             f"{m['date']}, commit {m['git_commit']}{' (dirty)' if m.get('git_dirty') else ''}, torch "
             f"{m['machine']['torch']}, CUDA {res['device'].get('cuda_version')}, driver {res['device'].get('driver')}",
             f"command: `{m['command']}`", "",
             f"matmul peak ({res['peak']['dtype']}, {res['peak']['n']}³): {res['peak']['tflops']:.3g} TFLOP/s", "",
             "| preset | N × batch | ckpt | s/step | bp/s | TFLOP/s | util | peak GiB | estimate GiB (act + state) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["steps"]:
        est = r["estimate_gib"]
        peak = r.get("peak_memory_gib", r.get("saved_activations_gib"))
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['length']} × {r['batch']} | {r['activation_checkpointing']} | "
                         f"{r['error']} | | | | {peak if peak is None else f'{peak:.2f}'} | "
                         f"{est['activations']:.2f} + {est['model_state']:.2f} |")
            continue
        lines.append(f"| {r['preset']} | {r['length']} × {r['batch']} | {r['activation_checkpointing']} | "
                     f"{r['seconds']:.3f} | {r['bp_per_s']:,.0f} | {r['achieved_tflops']:.2f} | "
                     f"{r['utilisation']:.1%} | {peak:.2f} | {est['activations']:.2f} + {est['model_state']:.2f} |")
    if res.get("status"):
        lines += ["", "Other parts of scripts/gpu_check.sh (exit codes, 0 = passed):", ""]
        lines += [f"- {k}: {v}" for k, v in res["status"].items()]
    lines += ["", "On CPU (dry run) the peak column is the saved-tensor bytes of one step; on CUDA it is "
              "torch.cuda.max_memory_allocated over the warm-up and timed steps, weights and optimizer included."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, preset tiny at 256 bp: checks the script, not the GPU")
    p.add_argument("--presets", nargs="+", default=None)
    p.add_argument("--length", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--status", nargs="*", default=[], help="name=exit_code of the script's other parts")
    args = p.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    presets = args.presets or (["tiny"] if dry else ["paper", "small", "base"])
    N = args.length or (256 if dry else 4096)
    batch = args.batch or (2 if dry else 8)
    warmup, repeats = (1, 2) if dry else (args.warmup, args.repeats)
    bf16 = resolve("auto", device) == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, 256 if dry else 8192, 2 if dry else 10)
    print(f"matmul peak: {peak['tflops']:.2f} TFLOP/s ({peak['dtype']})", flush=True)
    steps = []
    for name in presets:
        for ckpt in (False, True):
            row = time_step(name, N, batch, device, bf16, ckpt, warmup, repeats)
            if "seconds" in row:
                row["utilisation"] = row["achieved_tflops"] / peak["tflops"]
            steps.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    status = dict(s.split("=", 1) for s in args.status)
    res = {"dry_run": dry, "meta": run_metadata(),
           "device": {"name": torch.cuda.get_device_name(0) if not dry else "cpu", "driver": driver(),
                      "cuda_version": torch.version.cuda,
                      "memory_gib": memory.device_memory(device) / 2**30 if memory.device_memory(device) else None},
           "peak": peak, "steps": steps, "status": status}
    out = Path(args.out)
    write_json_atomic(out / "gpu_check.json", res)
    write_text_atomic(out / "gpu_check.md", markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
