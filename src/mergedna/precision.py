"""Mixed precision: bf16 autocast where the hardware multiplies bf16 natively, fp32 elsewhere.

bf16 autocast is the default for training and inference, and on a CPU with AMX or AVX512-BF16
(or a CUDA GPU with bf16) it is several times faster than fp32. On a CPU without either (AVX2-only
x86, for example) PyTorch falls back to a scalar bf16 GEMM that is *hundreds* of times slower than
fp32; measured on a 2-core AVX2 EPYC: 0.9 GFLOP/s in bf16 against 152 in fp32
(``benchmarks/results/avx2_bf16_peak/suite.md``). So the default
precision is ``"auto"``: bf16 where it is native, fp32 otherwise; ``"bf16"`` forces autocast anyway
(with a warning where it is slow), ``"fp32"`` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@functools.lru_cache(maxsize=None)
def bf16_is_native(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` ("cpu" or "cuda") multiplies bf16 matrices in hardware."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve(precision: str | bool | None, device: str | torch.device = "cpu") -> str:
    """``"bf16"`` or ``"fp32"`` for a requested ``precision``: "auto"/None, "bf16"/True, "fp32"/False."""
    if precision is None or precision is True or precision is False:
        precision = {None: "auto", True: "bf16", False: "fp32"}[precision]
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "auto":
        return "bf16" if bf16_is_native(device_type) else "fp32"
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
