"""LLaMA-style bidirectional transformer blocks: pre-norm RMSNorm, SwiGLU, rotary positions.

One block type serves all four modules. Attention has two forms, both on heads-first
(B, H, n, hd) tensors:

* full: every token sees every real token of its sequence (Latent Encoder / Decoder), on
  ``torch.nn.functional.scaled_dot_product_attention`` (unmasked when there is no padding), except
  for short bf16 sequences on a CPU (see :func:`explicit_pays`), where the same softmax attention
  written as two batched matmuls is 2-10x faster in training;
* local: non-overlapping windows of ``w`` tokens (Local Encoder over current tokens,
  Local Decoder over bases), as explicit batched matmuls over the windows. Cost is O(n·w),
  never O(n²); the last window is padded.

Positions are per token and may be fractional (a merged token sits at the mean base
coordinate of its span), so rotary angles are computed from a ``(B, n)`` position tensor.
Keys are masked with an additive bias: ``-inf`` on padding, and optionally ToMe's
proportional attention ``log(size)`` on real tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MergeDNAConfig


def rotary_cos_sin(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for positions ``pos`` (B, n), float. Returns cos, sin of shape (B, 1, n, head_dim/2),
    laid out for heads-first tensors (B, H, n, hd)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[..., None] * inv_freq  # (B, n, hd/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., B, H, n, hd) by the tables from :func:`rotary_cos_sin` (rotate-half convention).
    Returns a contiguous tensor."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def key_bias(mask: torch.Tensor, size: torch.Tensor | None = None, padded: bool | None = None
             ) -> torch.Tensor | None:
    """Additive key bias (B, n), float32: ``-inf`` on padding, ``log(size)`` on real tokens if given, else 0.
    ``None`` when it would be all zeros (no padding, no sizes): attention then runs unmasked, which is faster.
    ``padded``: whether ``mask`` has any padding, when the caller knows it on the host (else one device read)."""
    if size is None:
        has_padding = (not bool(mask.all())) if padded is None else padded
        if not has_padding:
            return None
        real = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    else:
        real = size.float().clamp_min(1.0).log()
    return real.masked_fill(~mask, float("-inf"))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)  # gate and up projections, fused
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Attention(nn.Module):
    def __init__(self, cfg: MergeDNAConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, bias, window: int | None = None) -> torch.Tensor:
        """x (B, n, D); cos/sin (B, 1, n, hd/2); bias (B, n) additive key bias or None; window w or None (full)."""
        B, n, D = x.shape
        qkv = self.qkv(x).view(B, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, n, hd)
        q, k = apply_rotary(qkv[:2], cos, sin).unbind(0)  # q and k rotated together, contiguous (B, H, n, hd)
        v = qkv[2].contiguous()
        if window is None:
            out = full_attention(q, k, v, bias)
        else:
            out = _local_attention(q, k, v, bias, window)
        return self.proj(out.transpose(1, 2).reshape(B, n, D))


# Longest sequence (tokens) for which explicit attention beats SDPA in training (forward + backward) on
# a CPU, one thread, batch 32, 4 heads of 64 (Xeon with AMX, torch 2.13; benchmarks/bench_attention.py,
# results/finetune_speed/xeon_amx/attention_cpu.md): in bf16 explicit is 1.6-10x faster up to 150 tokens,
# 0.7x at 200, 0.4x at 300 (three runs). In fp32 the two were level up to 100 tokens (0.7-1.5x across
# three runs), so fp32 keeps SDPA. Without a gradient SDPA's forward is as fast or faster from 50 tokens, so
# inference always takes SDPA.
EXPLICIT_MAX_TOKENS = {torch.bfloat16: 160}


def explicit_in_training(n: int, dtype: torch.dtype, device_type: str) -> bool:
    """Whether full attention over ``n`` tokens in ``dtype`` on ``device_type`` takes the explicit form when a
    backward pass follows (the one rule: :func:`explicit_pays` and the memory estimate both ask it)."""
    return device_type == "cpu" and n <= EXPLICIT_MAX_TOKENS.get(dtype, 0)


def explicit_pays(q: torch.Tensor) -> bool:
    """Whether :func:`full_attention` should use explicit matmuls rather than SDPA for ``q`` (B, H, n, hd):
    on a CPU, when a backward pass will follow, for short sequences."""
    return (q.requires_grad and torch.is_grad_enabled()
            and explicit_in_training(q.shape[-2], q.dtype, q.device.type))


def _softmax_attention(q, k, v, bias) -> torch.Tensor:
    """softmax(q kᵀ / √hd + bias) v as batched matmuls, the softmax in float32 (as SDPA's kernels);
    ``bias`` broadcasts to the scores, or None. Full attention's explicit form and each local window."""
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v


def full_attention(q, k, v, bias, explicit: bool | None = None) -> torch.Tensor:
    """Softmax attention of every query over every key. q/k/v (B, H, n, hd) -> (B, H, n, hd); bias (B, n)
    additive key bias or None. ``explicit``: force the matmul form (True) or SDPA (False); default
    :func:`explicit_pays`. Both compute the same function (tests/test_model.py)."""
    if explicit is None:
        explicit = explicit_pays(q)
    if not explicit:
        mask = None if bias is None else bias.to(q.dtype)[:, None, None, :]  # (B, 1, 1, n)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _softmax_attention(q, k, v, None if bias is None else bias[:, None, None, :])  # scores (B, H, n, n)


def _local_attention(q, k, v, bias, w: int) -> torch.Tensor:
    """Attention inside non-overlapping windows of ``w`` tokens. q/k/v (B, H, n, hd) -> (B, H, n, hd);
    bias (B, n) or None."""
    B, H, n, hd = q.shape
    nw = -(-n // w)
    pad = nw * w - n
    if bias is None:
        bias = q.new_zeros(B, n, dtype=torch.float32)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        bias = F.pad(bias, (0, pad), value=float("-inf"))

    def windows(t):  # (B, H, nw*w, hd) -> (B, H, nw, w, hd), a view
        return t.view(B, H, nw, w, hd)

    # (B, 1, nw, w, w): key bias per window; a padding query may see itself so no row is all -inf
    # (a fully padded window would otherwise give NaN, whose gradient leaks into the weights).
    wbias = bias.view(B, 1, nw, 1, w).expand(B, 1, nw, w, w)
    eye = torch.eye(w, dtype=torch.bool, device=q.device)
    wbias = torch.where(eye, wbias.clamp_min(0.0), wbias)
    # Explicit softmax attention: for 16×16 windows it is ~10x faster than SDPA's CPU kernels in
    # the backward pass (measured in benchmarks/bench_model.py), and memory is O(n·w) either way.
    out = _softmax_attention(windows(q), windows(k), windows(v), wbias)  # scores (B, H, nw, w, w)
    return out.view(B, H, nw * w, hd)[:, :, :n]


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); with config.dropout > 0
    each branch passes through dropout before it is added."""

    def __init__(self, cfg: MergeDNAConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg.hidden_size, cfg.ffn_size)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()  # residual dropout (config.dropout)

    def forward(self, x, cos, sin, bias, window: int | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, bias, window))
        return x + self.drop(self.ffn(self.ffn_norm(x)))
