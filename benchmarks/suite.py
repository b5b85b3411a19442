"""Speed suite: the machine's matmul peak, MergeDNA against peer encoders, length scaling, sampler.

    python benchmarks/suite.py                          # the full run: tens of minutes on 2 cores, mostly
                                                        # the whole-model length-scaling rows at 16k and 32k
    python benchmarks/suite.py --quick                  # tiny sizes, seconds: a smoke test
    python benchmarks/suite.py --only peak mergedna     # a subset of the sections

Sections, all in one run on this machine, all under bf16 autocast on the CPU (``--precision``:
the default ``auto`` is bf16 where the CPU multiplies bf16 natively, AMX or AVX512-BF16, and fp32
elsewhere, where bf16 runs hundreds of times slower; the precision used is recorded, and
utilisation is against the peak of that precision):

``peak``
    Square matmuls (``--peak-sizes``, default 2048 and 4096) in bf16 and fp32 (bf16 only where
    native or forced), best of ``--peak-repeats``; measured at the start and again at the end of
    the run. The larger of the two values of the precision in use is the reference for
    utilisation (the conservative choice). Runs whenever
    ``mergedna`` or ``peers`` does.
``mergedna``
    Presets ``--presets`` (default small, base) at N = ``--length`` bases × ``--batch``.
    *Training step*: the three pretraining passes of ``MergeDNAPretrainer`` (default
    objective, ratio L/N fixed at its mean 0.5 so the FLOP count is exact), forward and
    backward, then gradient clipping and the AdamW step (``foreach``, the trainer's parameter
    groups) and ``zero_grad``: the optimiser is *included* in the timed step, and its own share
    is recorded as ``optimizer_s``. *Inference*: φ + ψ forward (the embedding model), no_grad.
    Achieved FLOP/s = :mod:`mergedna.flops` count / median time; utilisation = that / peak.
``peers``
    ``transformers`` ``EsmForMaskedLM`` (Nucleotide-Transformer style: 6-mer tokens, N/6 of
    them, rotary positions, a 4,107-token vocabulary as NT-v2) and ``BertForMaskedLM``
    (DNABERT-2 style: about 5 bp per token, N/5 tokens, 4,096 tokens), random weights, dropout
    off (MergeDNA has none), width and heads of the MergeDNA preset they face, FFN 4·D, and the
    number of layers that brings the total parameter count closest to that preset's
    ``MergeDNAForPretraining`` total. Training step = MLM forward + backward (15% of tokens
    masked) + clipping + AdamW, as above; inference = the encoder alone, no_grad.
    MergeDNA and its peers of the same size are timed *interleaved*: every workload gets
    ``--warmup`` untimed calls, then ``--repeats`` rounds each timing every workload once, and
    the median is kept; a slow spell on the shared machine then hits all of them alike.
    With ``--compile`` a second MergeDNA of each preset, its blocks under ``torch.compile``
    (what ``mergedna pretrain --compile`` does), joins the same rounds; ``warmup_s`` records
    the warm-up, which for it includes compilation.
``scaling``
    ``--scaling-preset`` (default small), batch 1, N in ``--scaling-lengths`` (1k … 32k):
    forward + backward of the Local Encoder alone (loss = mean square of its output tokens) and
    of the whole three-pass pretraining step (no optimiser: its cost does not grow with N).
    Each configuration runs in a fresh subprocess. Once model and input are built, the
    kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the current RSS noted;
    ``peak_rss_gb`` is the peak during warm-up and timed calls (``VmHWM``), ``rss_delta_gb``
    that peak minus the RSS before: activations, gradients and allocator slack. (Without
    clear_refs it falls back to ``ru_maxrss``; the row's ``memory_method`` says which.) Growth exponents between
    successive lengths, of time, memory and the analytical FLOPs, flag super-linear terms.
``finetune``
    Fine-tuning on short sequences (issue 14): for each N in ``--ft-lengths`` (70, 100, 300 bp),
    batch ``--ft-batch`` (32) of genome windows, a training step (forward + backward + clip +
    AdamW, as ``mergedna.finetune.fit`` does it) and an evaluation (no_grad forward) of the
    sequence classifier of each ``--ft-presets`` (tiny, small) with the fine-tuning default head,
    and of the Genomic Benchmarks CNN baseline, all interleaved in the same rounds.
    Sequences/s and bp/s per row.
``sampler``
    ``GenomeSampler.batch`` on the FASTA ``--fasta`` (window N = ``--length``, ``--sampler-batch``
    windows a call, one thread) for ``--sampler-seconds``; compared with the fastest measured
    training consumption (bp/s).

The issue's targets are checked at the end and printed with PASS/MISS and the ratio to the
threshold. Results go to ``<out-dir>/suite.json`` and ``suite.md`` (latest run; machine, cores,
torch, date, commit, command) and one line per run is appended to ``suite_history.jsonl``
(``--label`` names a run, e.g. an optimisation's before/after). Inputs to MergeDNA are windows
of the FASTA; its costs do not depend on content (merge budgets are fixed per length).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from mergedna import flops
from mergedna.config import preset as make_preset
from mergedna.data.genome import Genome, GenomeSampler
from mergedna.model import MergeDNAForPretraining, prepare_inputs
from mergedna.config import MergeDNAConfig
from mergedna.objectives import MergeDNAPretrainer, ObjectiveConfig, step_generator
try:
    from mergedna.precision import PRECISIONS, bf16_is_native, resolve
except ImportError:  # an older mergedna timed by benchmarks/ab_commits.py: before mergedna.precision, always bf16
    PRECISIONS, bf16_is_native, resolve = ("auto", "bf16"), (lambda device_type="cpu": True), (lambda p: "bf16")
from mergedna.provenance import run_metadata, write_json_atomic, write_text_atomic
from mergedna.training.trainer import TrainConfig, apply_block_options, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("peak", "mergedna", "peers", "scaling", "sampler", "finetune")
DEFAULT_FASTA = ROOT.parent / "shared" / "data" / "genomes" / "GRCh37_chr20.fa.gz"
PEERS = {  # name: (bases per token, vocabulary size)
    "esm": (6, 4107),  # Nucleotide Transformer v2: 6-mers + single bases + specials
    "bert": (5, 4096),  # DNABERT-2: BPE, about 5 bp per token on average
}
FULL = dict(presets=["small", "base"], length=4096, batch=1, warmup=1, repeats=3, peak_sizes=[2048, 4096],
            peak_repeats=3, scaling_preset="small", scaling_lengths=[1024, 2048, 4096, 8192, 16384, 32768],
            scaling_repeats=2, sampler_seconds=5.0, ft_presets=["tiny", "small"], ft_lengths=[70, 100, 300],
            ft_batch=32)
QUICK = dict(presets=["tiny"], length=512, batch=1, warmup=1, repeats=2, peak_sizes=[256, 512], peak_repeats=3,
             scaling_preset="tiny", scaling_lengths=[1024, 2048], scaling_repeats=1, sampler_seconds=0.5,
             ft_presets=["tiny"], ft_lengths=[70], ft_batch=8)
RATIO = MergeDNAConfig().merge_ratio  # L/N fixed at the mean of the pretraining draw
MLM_MASK = 0.15
# the speed targets the suite checks (each a row of its "targets" table): training reaches >= 30% of the
# precision's matmul peak and >= 3x the FLOP/s of an ESM encoder of the same size; the Local Encoder's time per
# base at N=16k stays within 1.3x of N=1k; the genome sampler serves >= 20x what training consumes
TARGET_UTIL, TARGET_VS_ESM, TARGET_LOCAL_SCALING, TARGET_SAMPLER = 0.30, 3.0, 1.3, 20.0
SUPERLINEAR = 1.1  # growth exponent above which an interval is flagged


PRECISION = resolve("auto")  # set from --precision by main()


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=PRECISION == "bf16")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- timing
def interleaved(workloads: dict[str, Callable[[], dict | None]], warmup: int, repeats: int) -> dict[str, dict]:
    """Warm every workload up, then ``repeats`` rounds timing each once. A workload may return
    extra sub-timings (seconds) which are collected alongside. Returns name -> {times, warmup_s, extra lists}."""
    out: dict[str, dict] = {k: {"times": []} for k in workloads}
    for name, fn in workloads.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        out[name]["warmup_s"] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, fn in workloads.items():
            t0 = time.perf_counter()
            extra = fn() or {}
            out[name]["times"].append(time.perf_counter() - t0)
            for k, v in extra.items():
                out[name].setdefault(k, []).append(v)
    return out


def matmul_peak(sizes: list[int], repeats: int) -> dict:
    """Best GFLOP/s of square matmuls per dtype, with every size's best. bf16 only where it is the
    precision in use or native (a non-native bf16 matmul at 4096 takes minutes)."""
    res = {}
    dtypes = (("bf16", torch.bfloat16), ("fp32", torch.float32))
    for name, dtype in [d for d in dtypes if d[0] in (PRECISION, "fp32") or bf16_is_native("cpu")]:
        rows = []
        for n in sizes:
            g = torch.Generator().manual_seed(n)
            a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
            c = torch.empty(n, n, dtype=dtype)
            torch.mm(a, b, out=c)  # warm-up
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                torch.mm(a, b, out=c)
                best = min(best, time.perf_counter() - t0)
            rows.append({"n": n, "seconds": best, "gflops": 2 * n**3 / best / 1e9})
        res[name] = {"gflops": max(r["gflops"] for r in rows), "sizes": rows}
    return res


# ---------------------------------------------------------------- inputs
def base_windows(genome: Genome | None, n: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(batch, n) ids: training windows of the genome, or random bases when none fits."""
    if genome is not None:
        try:
            return GenomeSampler(genome, window=n, seed=seed).batch(0, batch), "genome windows"
        except ValueError:
            pass
    return torch.randint(0, 4, (batch, n), generator=torch.Generator().manual_seed(seed)), "random bases"


def load_genome(args) -> Genome:
    t0 = time.perf_counter()
    genome = Genome.from_fasta(args.fasta, cache_dir=args.cache_dir)
    print(f"genome {Path(args.fasta).name}: {len(genome):,} bp, {'cached' if genome.cache_hit else 'parsed'} "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return genome


# ---------------------------------------------------------------- workloads
def mergedna_workloads(name: str, ids: torch.Tensor, compile: bool = False) -> tuple[dict, dict]:
    """Closures for the training step and inference of preset ``name``, and their descriptions;
    ``compile`` puts every block under ``torch.compile`` (keys end in ``_compiled``)."""
    cfg = make_preset(name)
    torch.manual_seed(0)
    model = MergeDNAForPretraining(cfg)
    if compile:
        apply_block_options(model, compile=True)
    pretrainer = MergeDNAPretrainer(model, ObjectiveConfig())
    opt = make_optimizer(model, TrainConfig())
    B, N = ids.shape
    step_index = [0]

    def train():
        with autocast():
            parts = pretrainer(ids, step_generator(0, step_index[0]), ratio=RATIO)
        parts["loss"].backward()
        step_index[0] += 1
        return optimizer_step(model, opt)

    def infer():
        with torch.no_grad(), autocast():
            model.mergedna(ids)

    params, tag = n_params(model), "_compiled" if compile else ""
    info = {f"mergedna_{name}_train{tag}": dict(model="mergedna", mode="train", params=params, tokens=N,
                                                compiled=compile,
                                                flops=flops.pretraining_step(cfg, N, B, RATIO)["total"]),
            f"mergedna_{name}_inference{tag}": dict(model="mergedna", mode="inference", compiled=compile,
                                                    params=n_params(model.mergedna), tokens=N,
                                                    flops=sum(flops.inference(cfg, N, B).values()))}
    return {f"mergedna_{name}_train{tag}": train, f"mergedna_{name}_inference{tag}": infer}, info


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Clip, step and clear, as the trainer does; returns the time it took as ``optimizer_s``."""
    t0 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"optimizer_s": time.perf_counter() - t0}


def peer_model(kind: str, hidden: int, heads: int, layers: int, n_tokens: int, device=None):
    from transformers import BertConfig, BertForMaskedLM, EsmConfig, EsmForMaskedLM

    vocab = PEERS[kind][1]
    common = dict(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers,
                  intermediate_size=4 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "esm":
        cfg = EsmConfig(**common, position_embedding_type="rotary", pad_token_id=1, mask_token_id=2,
                        max_position_embeddings=max(1026, n_tokens + 2))
        cls = EsmForMaskedLM
    else:
        cfg = BertConfig(**common, pad_token_id=0, max_position_embeddings=max(512, n_tokens))
        cls = BertForMaskedLM
    if device is None:
        torch.manual_seed(0)
        return cls(cfg)
    with torch.device(device):
        return cls(cfg)


def match_layers(kind: str, hidden: int, heads: int, n_tokens: int, target: int) -> int:
    """Layer count whose total parameters come closest to ``target`` (counted on the meta device)."""
    one, two = (n_params(peer_model(kind, hidden, heads, k, n_tokens, "meta")) for k in (1, 2))
    per_layer, fixed = two - one, 2 * one - two
    return max(1, round((target - fixed) / per_layer))


def peer_workloads(kind: str, name: str, target_params: int, N: int, batch: int) -> tuple[dict, dict]:
    cfg = make_preset(name)
    bp_per_token, vocab = PEERS[kind]
    n = max(1, round(N / bp_per_token))
    layers = match_layers(kind, cfg.hidden_size, cfg.num_heads, n, target_params)
    model = peer_model(kind, cfg.hidden_size, cfg.num_heads, layers, n)
    encoder = model.esm if kind == "esm" else model.bert
    opt = make_optimizer(model, TrainConfig())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, n), generator=g)  # above the special tokens
    masked = torch.rand(batch, n, generator=g) < MLM_MASK
    mask_id = 2 if kind == "esm" else 4
    inputs, labels = ids.masked_fill(masked, mask_id), ids.masked_fill(~masked, -100)

    def train():
        with autocast():
            loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        return optimizer_step(model, opt)

    def infer():
        with torch.no_grad(), autocast():
            encoder(input_ids=ids)

    shape = dict(hidden=cfg.hidden_size, layers=layers, intermediate=4 * cfg.hidden_size, n_tokens=n, batch=batch)
    desc = dict(layers=layers, hidden=cfg.hidden_size, heads=cfg.num_heads, bp_per_token=bp_per_token,
                attn_implementation=model.config._attn_implementation, tokens=n)
    info = {f"{kind}_{name}_train": dict(model=kind, mode="train", params=n_params(model), **desc,
                                         flops=flops.peer_training_step(vocab=vocab, **shape)["total"]),
            f"{kind}_{name}_inference": dict(model=kind, mode="inference", params=n_params(encoder), **desc,
                                             flops=sum(flops.peer_encoder(**shape).values()))}
    return {f"{kind}_{name}_train": train, f"{kind}_{name}_inference": infer}, info


def throughput(args, genome: Genome | None, sections: set[str]) -> list[dict]:
    """MergeDNA and/or peers, one size at a time, interleaved within a size."""
    rows = []
    for name in args.presets:
        ids, source = base_windows(genome, args.length, args.batch)
        workloads, info = {}, {}
        with torch.device("meta"):
            target = n_params(MergeDNAForPretraining(make_preset(name)))
        if "mergedna" in sections:
            for compiled in (False, True) if args.compile else (False,):
                w, i = mergedna_workloads(name, ids, compile=compiled)
                workloads.update(w)
                info.update(i)
        if "peers" in sections:
            for kind in PEERS:
                w, i = peer_workloads(kind, name, target, args.length, args.batch)
                workloads.update(w)
                info.update(i)
                print(f"peer {kind} for {name}: {i[f'{kind}_{name}_train']['layers']} layers x D "
                      f"{make_preset(name).hidden_size}, {i[f'{kind}_{name}_train']['params']:,} parameters "
                      f"(MergeDNA {name}: {target:,})", flush=True)
        timed = interleaved(workloads, args.warmup, args.repeats)
        for key, t in timed.items():
            sec = statistics.median(t["times"])
            row = {"key": key, "size": name, **info[key], "length": args.length, "batch": args.batch,
                   "input": source if info[key]["model"] == "mergedna" else "random tokens",
                   "seconds": sec, "times": t["times"], "warmup_s": t["warmup_s"],
                   "bp_per_s": args.batch * args.length / sec,
                   "gflops_per_s": info[key]["flops"] / sec / 1e9}
            if "optimizer_s" in t:
                row["optimizer_s"] = statistics.median(t["optimizer_s"])
            rows.append(row)
            print(f"{key:<28} {row['params']:>12,} params {row['bp_per_s']:>10,.0f} bp/s "
                  f"{row['gflops_per_s']:>8.1f} GFLOP/s", flush=True)
        del workloads, info
        gc.collect()
    return rows


# ---------------------------------------------------------------- fine-tuning on short sequences (issue 14)
def finetune_workloads(preset_name: str, ids: torch.Tensor, compile: bool = False) -> dict:
    """Training step (forward + backward + clip + AdamW, the groups and optimiser of
    ``mergedna.finetune.fit``) and evaluation (no_grad forward) of a 2-class sequence classifier with
    the fine-tuning default head; ``compile``: its blocks under ``torch.compile`` (``finetune --compile``).
    Also runs against an older ``mergedna`` (``benchmarks/ab_commits.py``): before position-aware heads
    its only head was the mean pool, and its optimiser lived in the trainer."""
    from mergedna.heads import MergeDNAForSequenceClassification

    try:
        from mergedna.finetune import FLATTEN_MAX_LENGTH, FinetuneSettings
        pooling = FinetuneSettings().pooling or "mean"
        if pooling == "auto":  # what fine-tuning picks for a task of fixed-length windows
            try:
                from mergedna.finetune import default_pooling  # mean_flatten since the head-lr change
                pooling = default_pooling(SimpleNamespace(lengths=np.full(len(ids), ids.shape[1])))
            except ImportError:  # an older mergedna (benchmarks/ab_commits.py): its auto head was flatten
                pooling = "flatten" if ids.shape[1] <= FLATTEN_MAX_LENGTH else "cls"
        head = dict(pooling=pooling, cls_token=pooling == "cls", pool_length=ids.shape[1])
    except ImportError:
        head = {}
    try:
        from mergedna.training.optim import adamw, param_groups
    except ImportError:  # the old fine-tuning loop: matrices decay, vectors do not
        from mergedna.training.trainer import adamw

        def param_groups(named, decay):
            named = list(named)
            return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": decay},
                    {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]

    torch.manual_seed(0)
    model = MergeDNAForSequenceClassification(make_preset(preset_name, num_labels=2, **head))
    if compile:
        apply_block_options(model, compile=True)
    opt = adamw(param_groups(model.named_parameters(), 0.01), lr=1e-4)
    labels = torch.arange(len(ids)) % 2

    def train():
        model.train()
        with autocast():
            loss = model(ids, labels=labels).loss
        loss.backward()
        return optimizer_step(model, opt)

    def evaluate():
        model.eval()
        with torch.no_grad(), autocast():
            model(ids)

    tag = "_compiled" if compile else ""
    return {f"ft_mergedna_{preset_name}_train{tag}": train, f"ft_mergedna_{preset_name}_eval{tag}": evaluate}


def cnn_workloads(ids: torch.Tensor) -> dict:
    """The Genomic Benchmarks CNN baseline (mergedna.baselines) on the same batch: Adam step and eval."""
    from mergedna.baselines import GenomicBenchmarksCNN

    torch.manual_seed(0)
    n = max(64, ids.shape[1])
    x = torch.nn.functional.pad(ids, (0, n - ids.shape[1]), value=5)
    model = GenomicBenchmarksCNN(2, n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    labels = torch.arange(len(ids)) % 2

    def train():
        model.train()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def evaluate():
        model.eval()
        with torch.no_grad():
            model(x)

    return {"ft_cnn_train": train, "ft_cnn_eval": evaluate}


def finetune_rows(args, genome: Genome | None) -> list[dict]:
    """Sequences/s and bp/s of fine-tuning steps and evaluation at each of ``--ft-lengths``, MergeDNA
    presets and the CNN interleaved in the same rounds (fp32 or bf16 as the run's precision)."""
    rows = []
    for n in args.ft_lengths:
        ids, source = base_windows(genome, n, args.ft_batch)
        workloads = {}
        for name in args.ft_presets:
            workloads.update(finetune_workloads(name, ids))
            if args.compile:
                workloads.update(finetune_workloads(name, ids, compile=True))
        workloads.update(cnn_workloads(ids))
        timed = interleaved(workloads, args.warmup, args.repeats)
        for key, t in timed.items():
            sec = statistics.median(t["times"])
            parts = key.removesuffix("_compiled").split("_")
            row = {"key": f"{key}_{n}", "model": parts[1], "size": parts[2] if parts[1] == "mergedna" else "-",
                   "mode": parts[-1], "compiled": key.endswith("_compiled"), "length": n, "batch": args.ft_batch, "input": source, "seconds": sec,
                   "times": t["times"], "seq_per_s": args.ft_batch / sec, "bp_per_s": args.ft_batch * n / sec}
            rows.append(row)
            print(f"fine-tune {row['model']:<9} {row['size']:<6} {row['mode']:<5} "
                  f"{'compiled ' if row['compiled'] else ''}N={n:<4} "
                  f"{row['seq_per_s']:>9,.1f} seq/s {row['bp_per_s']:>11,.0f} bp/s", flush=True)
    return rows


# ---------------------------------------------------------------- scaling (child processes)
def proc_status_gb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in GB from /proc, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def scaling_child(target: str, n: int, args) -> dict:
    """Time one length-scaling configuration in this (fresh) process; peak RSS is this process's."""
    cfg = make_preset(args.scaling_preset)
    torch.manual_seed(0)
    model = MergeDNAForPretraining(cfg)
    genome = Genome.from_fasta(args.fasta, cache_dir=args.cache_dir) if args.fasta else None
    ids, source = base_windows(genome, n, 1)
    base_mask = prepare_inputs(ids, None)
    pretrainer = MergeDNAPretrainer(model, ObjectiveConfig())

    def local():
        with autocast():
            out = model.mergedna.local_encoder(ids, base_mask, merge_ratio=RATIO)
        out.tokens.z.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def whole():
        with autocast():
            loss = pretrainer(ids, step_generator(0, 0), ratio=RATIO)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    if target == "local_encoder":
        count = 3 * sum(flops.local_encoder(cfg, n, RATIO).values())
    else:
        count = flops.pretraining_step(cfg, n, 1, RATIO)["total"]
    gc.collect()
    if reset_peak_rss() and proc_status_gb("VmRSS") is not None:
        method, rss_before = "VmHWM after a clear_refs reset, minus VmRSS before the steps", proc_status_gb("VmRSS")
    else:
        method = "ru_maxrss high-water mark, minus its value before the steps (import peaks may hide growth)"
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times = interleaved({target: local if target == "local_encoder" else whole}, args.warmup,
                        args.scaling_repeats)[target]["times"]
    rss = proc_status_gb("VmHWM") if method.startswith("VmHWM") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    sec = statistics.median(times)
    return {"seconds": sec, "times": times, "s_per_mbp": sec / n * 1e6, "flops": count,
            "gflops_per_s": count / sec / 1e9, "peak_rss_gb": rss, "rss_before_gb": rss_before,
            "rss_delta_gb": rss - rss_before, "memory_method": method, "input": source}


def scaling(args) -> list[dict]:
    rows = []
    for target in ("local_encoder", "whole_model"):
        for n in args.scaling_lengths:
            cmd = [sys.executable, __file__, "--child-scaling", target, str(n), "--threads", str(args.threads),
                   "--precision", PRECISION,
                   "--scaling-preset", args.scaling_preset, "--warmup", str(args.warmup),
                   "--scaling-repeats", str(args.scaling_repeats), "--fasta", str(args.fasta)]
            if args.cache_dir:
                cmd += ["--cache-dir", str(args.cache_dir)]
            row = {"target": target, "preset": args.scaling_preset, "length": n, "batch": 1}
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if res.returncode == 0:
                    row.update(status="ok", **json.loads(res.stdout.strip().splitlines()[-1]))
                else:
                    if "out of memory" in res.stderr.lower() or "MemoryError" in res.stderr:
                        row["status"] = "out of memory"
                    elif res.returncode < 0:  # SIGKILL is what the kernel's OOM killer sends
                        row["status"] = f"killed by signal {-res.returncode} (out of memory if 9; see dmesg)"
                    else:
                        row["status"] = f"failed: {res.stderr.strip().splitlines()[-1:]}"
            except subprocess.TimeoutExpired:
                row["status"] = f"timeout after {args.timeout} s"
            rows.append(row)
            shown = (f"{row['s_per_mbp']:8.3f} s/Mbp, peak RSS {row['peak_rss_gb']:.3f} GB, "
                     f"{row['rss_delta_gb']:.3f} GB over baseline"
                     if row["status"] == "ok" else row["status"])
            print(f"scaling {target:<13} N={n:>6} {shown}", flush=True)
    growth_flags(rows)
    return rows


def growth_exponent(prev: dict, row: dict, key: str) -> float:
    """d log(row[key]) / d log(N) between two rows (1 = linear in N)."""
    return math.log(max(row[key], 1e-9) / max(prev[key], 1e-9)) / math.log(row["length"] / prev["length"])


def growth_flags(rows: list[dict]) -> None:
    """Annotate each row with growth exponents from the previous length of its part, and flags."""
    for target in ("local_encoder", "whole_model"):
        ok = [r for r in rows if r["target"] == target and r["status"] == "ok"]
        for prev, r in itertools.pairwise(ok):
            for name, key in (("time", "seconds"), ("flops", "flops"), ("memory", "rss_delta_gb")):
                r[f"{name}_exponent"] = growth_exponent(prev, r, key)
            t, f, m = r["time_exponent"], r["flops_exponent"], r["memory_exponent"]
            r["flags"] = []
            if f > SUPERLINEAR:
                r["flags"].append(f"FLOPs super-linear ({f:.2f}: latent attention and merge similarity)")
            if t > SUPERLINEAR:
                r["flags"].append(f"time super-linear ({t:.2f})" + (", as the FLOPs predict" if t <= f + 0.1
                                                                    else f", beyond the FLOPs ({f:.2f})"))
            if m > SUPERLINEAR:
                r["flags"].append(f"memory super-linear ({m:.2f})")
        if ok:
            ok[0]["flags"] = []


# ---------------------------------------------------------------- sampler
def sampler_bench(genome: Genome, args) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sampler = GenomeSampler(genome, window=args.length)
        sampler.batch(0, args.sampler_batch)  # warm-up
        steps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < args.sampler_seconds:
            sampler.batch(steps + 1, args.sampler_batch)
            steps += 1
    finally:
        torch.set_num_threads(threads)
    return {"fasta": str(args.fasta), "genome_bp": len(genome), "window": args.length, "batch": args.sampler_batch,
            "threads": 1, "steps": steps, "seconds": elapsed,
            "bp_per_s": steps * args.sampler_batch * args.length / elapsed}


# ---------------------------------------------------------------- targets and report
def rows_of(res: dict, key: str) -> list[dict]:
    """A section's rows, or [] when it did not run."""
    return res[key] if isinstance(res.get(key), list) else []


def check_targets(res: dict) -> list[dict]:
    """The issue's targets, each with value, threshold, ratio (>= 1 passes) and PASS/MISS or 'not run'."""
    out = []

    def add(name, value, threshold, higher_is_better=True, note=None):
        if value is None:
            out.append({"target": name, "status": "not run"})
            return
        ratio = value / threshold if higher_is_better else threshold / value
        out.append({"target": name, "value": value, "threshold": threshold, "ratio": ratio,
                    "status": "PASS" if ratio >= 1 else "MISS", **({"note": note} if note else {})})

    rows = {r["key"]: r for r in rows_of(res, "mergedna") + rows_of(res, "peers")}
    for name in res["settings"]["presets"]:
        train = rows.get(f"mergedna_{name}_train", {})
        prec = res["settings"].get("autocast", "bf16")
        add(f"training utilisation {name} >= {TARGET_UTIL:.0%} of {prec} peak", train.get("utilisation"), TARGET_UTIL)
        esm = rows.get(f"esm_{name}_train")
        vs = train["gflops_per_s"] / esm["gflops_per_s"] if train and esm else None
        note = None
        if esm and "utilisation" in esm and TARGET_VS_ESM * esm["utilisation"] > 1:
            note = (f"unreachable on this machine: ESM already runs at {esm['utilisation']:.0%} of the {prec} matmul "
                    f"peak, so {TARGET_VS_ESM:g}x ESM would be {TARGET_VS_ESM * esm['utilisation']:.0%} of it")
        add(f"training FLOP/s {name} >= {TARGET_VS_ESM:g}x ESM", vs, TARGET_VS_ESM, note=note)
    local = [r for r in rows_of(res, "scaling") if r["target"] == "local_encoder" and r["status"] == "ok"]
    within = [r for r in local if r["length"] <= 16384]
    if len(within) >= 2:
        lo, hi = within[0], within[-1]
        add(f"Local Encoder time/bp at N={hi['length']} within {TARGET_LOCAL_SCALING}x of N={lo['length']}",
            hi["s_per_mbp"] / lo["s_per_mbp"], TARGET_LOCAL_SCALING, higher_is_better=False)
    else:
        add("Local Encoder time/bp at N=16k within 1.3x of N=1k", None, TARGET_LOCAL_SCALING)
    train_bp = [r["bp_per_s"] for r in rows_of(res, "mergedna") if r["mode"] == "train"]
    sampler = res["sampler"]
    add(f"sampler >= {TARGET_SAMPLER:g}x training consumption",
        sampler["bp_per_s"] / max(train_bp) if train_bp and "bp_per_s" in sampler else None, TARGET_SAMPLER)
    return out


def markdown(res: dict) -> str:
    meta, m = res["meta"], res["meta"]["machine"]
    s = res["settings"]
    lines = ["# Speed suite", "",
             f"- machine: {m['cpu']}, {m['cpus']} cores, torch {m['torch']}, intra-op threads: {s['threads']}",
             f"- date {meta['date']}, commit {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''}"
             + (f", label `{meta['label']}`" if meta.get("label") else ""),
             f"- command: `{meta['command']}`",
             f"- {'bf16 autocast' if s.get('autocast', 'bf16') == 'bf16' else 'fp32 (no native bf16 on this CPU)'}; "
             "training step = forward + backward + clip + AdamW; FLOPs from `mergedna.flops`", ""]
    if "start" in res["peak"]:
        p = res["peak"]
        lines += ["## Matmul peak (GFLOP/s)", "", "| dtype | start | end | used |", "|---|---|---|---|"]
        for dt in [d for d in ("bf16", "fp32") if d in p["start"]]:
            end = p["end"][dt]["gflops"] if "end" in p else float("nan")
            lines.append(f"| {dt} | {p['start'][dt]['gflops']:.1f} | {end:.1f} | {p[dt]:.1f} |")
        lines.append("")
    if rows_of(res, "mergedna") or rows_of(res, "peers"):
        lines += [f"## Throughput (N = {s['length']}, batch {s['batch']}; median of {s['repeats']}, interleaved)", "",
                  f"| size | model | mode | params | tokens/seq | bp/s | GFLOP/s | util. {s.get('autocast', 'bf16')} "
                  "| optimiser s | warm-up s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows_of(res, "mergedna") + rows_of(res, "peers"), key=lambda r: s["presets"].index(r["size"])):
            opt = f"{r['optimizer_s']:.3f}" if "optimizer_s" in r else "-"
            model = r["model"] + (" (compiled)" if r.get("compiled") else "")
            lines.append(f"| {r['size']} | {model} | {r['mode']} | {r['params']:,} | {r['tokens']:,} | "
                         f"{r['bp_per_s']:,.0f} | {r['gflops_per_s']:.1f} | {r.get('utilisation', float('nan')):.1%} "
                         f"| {opt} | {r['warmup_s']:.1f} |")
        lines.append("")
        for r in rows_of(res, "peers"):
            if r["mode"] == "train":
                lines.append(f"- {r['model']} facing MergeDNA {r['size']}: {r['layers']} layers, D {r['hidden']}, "
                             f"{r['heads']} heads, FFN {4 * r['hidden']}, {r['tokens']} tokens per sequence "
                             f"({r['bp_per_token']} bp each), attention `{r['attn_implementation']}`")
        lines.append("")
    if rows_of(res, "scaling"):
        lines += [f"## Length scaling ({s['scaling_preset']}, batch 1, forward + backward)", "",
                  "Memory: a fresh subprocess per row; peak RSS during the calls, and Δ = that peak minus the RSS "
                  "once model and input were built. Exponents: d log(x) / d log(N) from the previous row "
                  "(1 = linear).", "",
                  "| part | N | s / Mbp | GFLOP/s | peak RSS GB | Δ RSS GB | exp. time | exp. FLOPs | exp. memory "
                  "| flags |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["scaling"]:
            if r["status"] != "ok":
                lines.append(f"| {r['target']} | {r['length']:,} | {r['status']} | | | | | | | |")
                continue
            ex = [f"{r[k]:.2f}" if k in r else "-" for k in ("time_exponent", "flops_exponent", "memory_exponent")]
            lines.append(f"| {r['target']} | {r['length']:,} | {r['s_per_mbp']:.3f} | {r['gflops_per_s']:.1f} | "
                         f"{r['peak_rss_gb']:.2f} | {r['rss_delta_gb']:.3f} | {' | '.join(ex)} | "
                         f"{'; '.join(r.get('flags', []))} |")
        lines.append("")
    if "bp_per_s" in res["sampler"]:
        sm = res["sampler"]
        lines += ["## Sampler", "", f"{sm['bp_per_s'] / 1e6:.1f} M bp/s (1 thread, window {sm['window']}, "
                  f"batch {sm['batch']}, {Path(sm['fasta']).name})", ""]
    if rows_of(res, "finetune"):
        lines += [f"## Fine-tuning on short sequences (batch {s['ft_batch']}; median of {s['repeats']}, interleaved)",
                  "", "Training step = forward + backward + clip + AdamW of a 2-class classifier (MergeDNA: "
                  "the fine-tuning default head); eval = no_grad forward. CNN = the Genomic Benchmarks baseline.",
                  "", "| model | size | mode | N | sequences/s | bp/s |", "|---|---|---|---|---|---|"]
        for r in res["finetune"]:
            model = r["model"] + (" (compiled)" if r.get("compiled") else "")
            lines.append(f"| {model} | {r['size']} | {r['mode']} | {r['length']} | {r['seq_per_s']:,.1f} | "
                         f"{r['bp_per_s']:,.0f} |")
        lines.append("")
    lines += ["## Targets", "", "| target | value | ratio to threshold | status |", "|---|---|---|---|"]
    for t in res["targets"]:
        if t["status"] == "not run":
            lines.append(f"| {t['target']} | - | - | not run |")
        else:
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {t['target']} | {t['value']:.3g} | {t['ratio']:.2f} | {t['status']}{note} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (seconds)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--fasta", default=str(DEFAULT_FASTA), help="genome for the sampler and the model inputs")
    p.add_argument("--cache-dir", default=None, help="genome cache (default: mergedna's)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--label", default=None, help="name of this run in the history file")
    p.add_argument("--compile", action="store_true", help="also time MergeDNA with torch.compile'd blocks")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16 autocast, fp32, or auto (default): bf16 where the CPU has AMX/AVX512-BF16")
    p.add_argument("--presets", nargs="+")
    p.add_argument("--length", type=int, help="N, bases per sequence")
    p.add_argument("--batch", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--peak-sizes", nargs="+", type=int)
    p.add_argument("--peak-repeats", type=int)
    p.add_argument("--scaling-preset")
    p.add_argument("--scaling-lengths", nargs="+", type=int)
    p.add_argument("--scaling-repeats", type=int)
    p.add_argument("--sampler-seconds", type=float)
    p.add_argument("--sampler-batch", type=int, default=8)
    p.add_argument("--ft-presets", nargs="+", help="fine-tuning rows: MergeDNA presets (default tiny small)")
    p.add_argument("--ft-lengths", nargs="+", type=int, help="fine-tuning rows: sequence lengths (70 100 300)")
    p.add_argument("--ft-batch", type=int, help="fine-tuning rows: batch size (default 32)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per scaling configuration")
    p.add_argument("--child-scaling", nargs=2, metavar=("TARGET", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> dict:
    global PRECISION
    args = parse(argv)
    PRECISION = resolve(args.precision)
    torch.set_num_threads(args.threads)
    if args.child_scaling:
        target, n = args.child_scaling
        print(json.dumps(scaling_child(target, int(n), args)))
        return {}
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    sections = set(args.only or SECTIONS)
    if sections & {"mergedna", "peers"}:
        sections.add("peak")
    meta = run_metadata(shlex.join(["python", "benchmarks/suite.py", *(sys.argv[1:] if argv is None else argv)]))
    meta["label"] = args.label
    settings = {k: getattr(args, k) for k in ("quick", "presets", "length", "batch", "warmup", "repeats",
                                              "peak_sizes", "peak_repeats", "scaling_preset", "scaling_lengths",
                                              "scaling_repeats", "sampler_seconds", "sampler_batch", "threads",
                                              "fasta", "compile", "ft_presets", "ft_lengths", "ft_batch")}
    settings.update(sections=sorted(sections), ratio=RATIO, autocast=PRECISION)
    if PRECISION != "bf16":
        print(f"precision {PRECISION}: this CPU has no native bf16 matmul (AMX/AVX512-BF16); utilisation is "
              "against the fp32 peak", flush=True)
    res: dict = {"meta": meta, "settings": settings}
    genome = load_genome(args) if sections & {"mergedna", "scaling", "sampler", "finetune"} else None  # cache once

    if "peak" in sections:
        res["peak"] = {"start": matmul_peak(args.peak_sizes, args.peak_repeats)}
        print("matmul peak: " + ", ".join(f"{dt} {v['gflops']:.1f}" for dt, v in res["peak"]["start"].items())
              + " GFLOP/s", flush=True)
    if sections & {"mergedna", "peers"}:
        rows = throughput(args, genome, sections)
        res["peak"]["end"] = matmul_peak(args.peak_sizes, args.peak_repeats)
        res["mergedna"] = [r for r in rows if r["model"] == "mergedna"]
        res["peers"] = [r for r in rows if r["model"] != "mergedna"]
    if "peak" in res:
        for dt in list(res["peak"]["start"]):
            res["peak"][dt] = max(res["peak"][k][dt]["gflops"] for k in ("start", "end") if k in res["peak"])
        for r in rows_of(res, "mergedna") + rows_of(res, "peers"):
            r["utilisation"] = r["gflops_per_s"] / res["peak"][PRECISION]
    if "finetune" in sections:
        res["finetune"] = finetune_rows(args, genome)
    if "scaling" in sections:
        res["scaling"] = scaling(args)
    if "sampler" in sections:
        res["sampler"] = sampler_bench(genome, args)
        print(f"sampler: {res['sampler']['bp_per_s'] / 1e6:.1f} M bp/s (1 thread)", flush=True)
    for section in SECTIONS:
        if section not in sections:
            res[section] = {"status": "not run"}
    res["targets"] = check_targets(res)

    print("\ntargets:")
    for t in res["targets"]:
        shown = (f"{t['status']}  value {t['value']:.3g}, ratio to threshold {t['ratio']:.2f}"
                 if t["status"] != "not run" else "not run")
        print(f"  {t['target']:<62} {shown}")
    out = Path(args.out_dir)
    write_json_atomic(out / "suite.json", res)
    write_text_atomic(out / "suite.md", markdown(res))
    with open(out / "suite_history.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")
    print(f"\nwrote {out / 'suite.json'} and {out / 'suite.md'}")
    return res


if __name__ == "__main__":
    main()
