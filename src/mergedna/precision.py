"""Mixed precision: bf16 autocast where the hardware multiplies bf16 faster than fp32, fp32 elsewhere.

bf16 autocast is the default for training and inference, and on a CPU with AMX or AVX512-BF16
(or a CUDA GPU with bf16) it is several times faster than fp32. On a CPU without either (AVX2-only
x86, for example) PyTorch falls back to a scalar bf16 GEMM that is *hundreds* of times slower than
fp32; measured on a 2-core AVX2 EPYC: 0.9 GFLOP/s in bf16 against 152 in fp32
(``benchmarks/results/avx2_bf16_peak/suite.md``).

Native is not enough either. On a virtualised Intel Xeon that reports AVX512-BF16 (no AMX), this
PyTorch build multiplies bf16 at *half* the fp32 rate (86 against 165 GFLOP/s on one thread), and
the casts autocast adds make a fine-tuning step of ``small`` 1.6x slower than fp32
(``results/finetune_speed``). So on a CPU, ``"auto"`` measures: bf16 only where the flags say
native *and* a short matmul probe (:func:`bf16_speedup`, ~30 ms once per process) finds bf16 at
least :data:`MIN_SPEEDUP` times faster than fp32; CUDA with bf16 support is trusted as is.
``"bf16"`` forces autocast anyway (with a warning where it is not native), ``"fp32"`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import warnings
from pathlib import Path

import torch

from .seqio import write_json_atomic

PRECISIONS = ("auto", "bf16", "fp32")
MIN_SPEEDUP = 1.2  # bf16 must beat fp32 by this much on the probe: autocast's casts cost the rest
PROBE_SHAPE = (1024, 256, 1024)  # (m, k, n): a block projection of a short-sequence batch


@functools.lru_cache(maxsize=None)
def bf16_is_native(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` ("cpu" or "cuda") multiplies bf16 matrices in hardware."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def probe_cache_path() -> Path:
    """Where the measured ratio is kept: ``$MERGEDNA_PRECISION_CACHE``, else ``~/.cache/mergedna/precision.json``."""
    return Path(os.environ.get("MERGEDNA_PRECISION_CACHE") or Path.home() / ".cache" / "mergedna" / "precision.json")


@functools.lru_cache(maxsize=None)
def bf16_speedup(device_type: str = "cpu") -> float:
    """bf16 / fp32 matmul throughput on ``device_type`` (0.0 where bf16 is not native: the probe would take
    seconds; CUDA: not probed, inf). Measured once per machine and torch version, then read back from
    :func:`probe_cache_path`, so every process on a machine (the ranks of a run, a run and its resume)
    makes the same choice; a fresh measurement on a loaded machine could otherwise tip either way."""
    if not bf16_is_native(device_type):
        return 0.0
    if device_type != "cpu":
        return float("inf")
    from .provenance import cpu_model

    key = f"{cpu_model()} | torch {torch.__version__}"
    path = probe_cache_path()
    try:
        cached = json.loads(path.read_text())
        if key in cached:
            return float(cached[key])
    except (OSError, ValueError):
        cached = {}
    ratio = _measure_bf16_speedup()
    try:  # atomic: a concurrent reader sees the old file or the new one
        write_json_atomic(path, {**cached, key: ratio})
    except OSError:
        pass  # a read-only home: measure again next time
    return ratio


def _measure_bf16_speedup() -> float:
    """fp32 time / bf16 time of one :data:`PROBE_SHAPE` matmul on one thread, alternating, best of 5 each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m, k, n = PROBE_SHAPE
        gen = torch.Generator().manual_seed(0)
        a32, b32 = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        pairs = {torch.float32: (a32, b32), torch.bfloat16: (a32.bfloat16(), b32.bfloat16())}
        best = {dtype: float("inf") for dtype in pairs}
        for dtype, (a, b) in pairs.items():
            a @ b  # warm-up: kernel selection
        for _ in range(5):  # alternating, best of 5 each: a slow spell on a shared machine hits both
            for dtype, (a, b) in pairs.items():
                t0 = time.perf_counter()
                a @ b
                best[dtype] = min(best[dtype], time.perf_counter() - t0)
        return best[torch.float32] / max(best[torch.bfloat16], 1e-9)
    finally:
        torch.set_num_threads(threads)


def bf16_pays(device_type: str = "cpu") -> bool:
    """Whether bf16 autocast is the faster choice on ``device_type`` (what ``"auto"`` picks)."""
    return bf16_speedup(device_type) >= MIN_SPEEDUP


def resolve(precision: str | bool | None, device: str | torch.device = "cpu") -> str:
    """``"bf16"`` or ``"fp32"`` for a requested ``precision``: "auto"/None, "bf16"/True, "fp32"/False."""
    if precision is None or precision is True or precision is False:
        precision = {None: "auto", True: "bf16", False: "fp32"}[precision]
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "auto":
        return "bf16" if bf16_pays(device_type) else "fp32"
    if precision == "bf16" and not bf16_is_native(device_type):
        _warn_slow_bf16(device_type)
    return precision


@functools.lru_cache(maxsize=None)
def _warn_slow_bf16(device_type: str) -> None:
    warnings.warn(f"bf16 autocast requested, but this {device_type} has no native bf16 matrix multiply "
                  "(no AMX or AVX512-BF16): it will run far slower than fp32. Use precision 'auto' or 'fp32'.",
                  RuntimeWarning, stacklevel=3)


def autocast(precision: str | bool | None, device: str | torch.device = "cpu"):
    """bf16 autocast on ``device`` if ``precision`` resolves to bf16, else a no-op context."""
    device_type = torch.device(device).type
    if resolve(precision, device_type) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)
