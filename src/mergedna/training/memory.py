"""Activation-memory estimate of a pretraining step, and the activation-checkpointing decision.

What backward keeps alive is, to a few percent, what the transformer blocks save. Per token and
per block, counted from what ``mergedna.attention.Block`` saves (the block's input, the norm
outputs cast for the linears, q/k/v after rotary, the attention output, the SwiGLU gate/up,
SiLU and product), with D the width, F the SwiGLU width::

    bf16 autocast   30·D + 8·F bytes        (residual stream fp32, matmul inputs and outputs bf16)
    fp32            45·D + 16·F bytes
    local attention + H·w·6 (bf16) or H·w·4 (fp32): the per-window softmax probabilities
    full attention  + H·n·6 where it runs as explicit matmuls (``attention.explicit_in_training``: bf16
                    training on a CPU, short sequences): the float32 probabilities and their bf16 copy; SDPA
                    saves only its output and a log-sum-exp per row

The constants were read off ``torch.autograd.graph.saved_tensors_hooks`` on one block
(``saved_bytes`` below; tests/test_memory.py checks them at two widths and checks the whole
three-pass step against the same measurement). Tokens per block come from the model's own merge
budgets (:mod:`mergedna.flops`): in pass 1 and pass 3 the Local Encoder's 4 blocks at N, … tokens,
Latent Encoder and Decoder at L, Local Decoder at N; in pass 2 (with a gradient only when
λ > 0) the Latent Encoder at its merging counts, then the decoders. Each pass with a gradient
adds the output norms and head (6·D per base and per token) and the Local Encoder's merges
(``MERGE_BYTES`` = 14·D per token entering a merge: the relaxed merge degrees, similarity and
weighted sums keep about that much, fp32, outside the blocks, so checkpointing does not remove
it). The merge constant was fitted to the saved bytes of whole steps of tiny and small (the rest
of the formula held to 1-8% there); the fitted estimate is within 5% of them with and without
checkpointing. Under bf16 the cast copies of the weights (2 bytes per parameter) are kept too.

With activation checkpointing a block keeps only its input (4·D bytes per token, fp32) and one
block's activations are rebuilt at a time during backward, so the estimate becomes the sum of the
inputs plus the largest block.

Model state is counted beside it: fp32 weights, gradients and AdamW's two moments, 16 bytes per
parameter (divided over the ranks under FSDP). Policy (``TrainConfig.activation_checkpointing``
= None, the default): checkpointing turns on when activations + model state exceed
``MEMORY_FRACTION`` of the device's memory (the GPU's total memory, or the host's RAM on CPU);
True or False forces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import flops
from ..attention import explicit_in_training
from ..config import MergeDNAConfig

MEMORY_FRACTION = 0.85  # of device memory; the rest: allocator fragmentation, temporaries, CUDA context
MERGE_BYTES = 14  # × D bytes per token entering a Local Encoder merge, per pass with a gradient
GiB = 2**30


def block_bytes_per_token(cfg: MergeDNAConfig, bf16: bool, window: int | None = None) -> int:
    """Saved-activation bytes of one block per token (see the module docstring)."""
    D, F = cfg.hidden_size, cfg.ffn_size
    per = 30 * D + 8 * F if bf16 else 45 * D + 16 * F
    if window is not None:
        per += cfg.num_heads * window * (6 if bf16 else 4)
    return per


@dataclass
class MemoryEstimate:
    activations: int  # bytes saved for backward by one micro-batch, without checkpointing
    activations_checkpointed: int  # the same with activation checkpointing per block
    model_state: int  # weights + gradients + AdamW moments on this rank
    device_memory: int | None  # bytes; None when unknown

    def needs_checkpointing(self) -> bool:
        if self.device_memory is None:
            return False
        return self.activations + self.model_state > MEMORY_FRACTION * self.device_memory

    def summary(self, chosen: bool) -> str:
        dev = f"{self.device_memory / GiB:.1f} GiB" if self.device_memory else "unknown"
        return (f"memory estimate per rank: activations {self.activations / GiB:.2f} GiB "
                f"({self.activations_checkpointed / GiB:.2f} GiB with checkpointing), model state "
                f"{self.model_state / GiB:.2f} GiB; device {dev}; activation checkpointing "
                f"{'on' if chosen else 'off'}")

    def to_dict(self) -> dict:
        return {"activations_bytes": self.activations, "activations_checkpointed_bytes": self.activations_checkpointed,
                "model_state_bytes": self.model_state, "device_memory_bytes": self.device_memory,
                "memory_fraction": MEMORY_FRACTION}


def _passes(cfg: MergeDNAConfig, N: int, ratio: float, lambda_latent: float, masking: str, objective: str):
    """[(tokens, window or None), ...] for every block run with a gradient, the per-pass head terms
    [(bases, tokens)], and the tokens entering Local Encoder merges with a gradient, for one sequence."""
    blocks, heads, merged = [], [], [0]
    local = flops.local_encoder_counts(cfg, N, ratio)
    L = local[-1]
    w = cfg.window_size

    def full_model(latent_counts):
        blocks.extend((n, w) for n in local[:-1])
        merged[0] += sum(local[:-1]) if cfg.tokenizer == "learned" else 0
        blocks.extend((m, None) for m in latent_counts)
        decoders()

    def decoders():
        blocks.extend((L, None) for _ in range(cfg.latent_decoder_layers))
        blocks.extend((N, w) for _ in range(cfg.local_decoder_layers))
        heads.append((N, L))

    if objective == "mlm":  # one masked pass through the whole model (no merging in ψ)
        full_model([L] * cfg.latent_encoder_layers)
        return blocks, heads, merged[0]
    full_model([L] * cfg.latent_encoder_layers)  # pass 1, MTR
    if lambda_latent > 0:  # pass 2, latent MTR: ψ with global merging, then the decoders (φ detached)
        blocks.extend((m, None) for m in flops.latent_merge_counts(cfg, L)[:-1])
        decoders()
    if masking != "none":  # pass 3, AMTM
        full_model([L] * cfg.latent_encoder_layers)
    return blocks, heads, merged[0]


def activation_bytes(cfg: MergeDNAConfig, N: int, batch: int, bf16: bool, checkpointing: bool = False,
                     ratio: float = 0.5, lambda_latent: float = 0.25, masking: str = "amtm",
                     objective: str = "mergedna", cpu: bool = False) -> int:
    """Estimated bytes saved for backward by one pretraining micro-batch of ``batch`` windows of N bases;
    ``cpu``: the step runs on a CPU (short full-attention blocks then take the explicit form)."""
    blocks, heads, merged = _passes(cfg, N, ratio, lambda_latent, masking, objective)
    # explicit full attention keeps its n x n probabilities, like a window of n
    dtype, device_type = torch.bfloat16 if bf16 else torch.float32, "cpu" if cpu else "cuda"
    blocks = [(n, n if w is None and explicit_in_training(n, dtype, device_type) else w) for n, w in blocks]
    D = cfg.hidden_size
    head = sum(6 * D * (n + l) for n, l in heads) + MERGE_BYTES * D * merged
    if checkpointing:
        inputs = sum(4 * D * n for n, _ in blocks)
        largest = max(n * block_bytes_per_token(cfg, bf16, w) for n, w in blocks)
        per_seq = inputs + head
        total = batch * per_seq + batch * largest
    else:
        total = batch * (sum(n * block_bytes_per_token(cfg, bf16, w) for n, w in blocks) + head)
    if bf16:
        total += 2 * _n_params(cfg)
    return int(total)


def _n_params(cfg: MergeDNAConfig) -> int:
    from ..model import MergeDNAForPretraining

    with torch.device("meta"):
        return sum(p.numel() for p in MergeDNAForPretraining(cfg).parameters())


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device``: the GPU's, or the host's physical RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def estimate(cfg: MergeDNAConfig, N: int, batch: int, bf16: bool, device: torch.device, shards: int = 1,
             ratio: float = 0.5, lambda_latent: float = 0.25, masking: str = "amtm",
             objective: str = "mergedna", memory: int | None = None) -> MemoryEstimate:
    """The estimate for one rank; ``shards`` > 1 divides model state (FSDP); ``memory`` overrides the
    device's memory (bytes)."""
    kw = dict(ratio=ratio, lambda_latent=lambda_latent, masking=masking, objective=objective,
              cpu=torch.device(device).type == "cpu")
    return MemoryEstimate(activations=activation_bytes(cfg, N, batch, bf16, False, **kw),
                          activations_checkpointed=activation_bytes(cfg, N, batch, bf16, True, **kw),
                          model_state=16 * _n_params(cfg) // max(1, shards),
                          device_memory=device_memory(device) if memory is None else memory)


def choose_checkpointing(requested: bool | None, est: MemoryEstimate) -> bool:
    """The flag wins when given; otherwise checkpointing is on exactly when the estimate does not fit."""
    return est.needs_checkpointing() if requested is None else bool(requested)


def saved_bytes(fn, exclude=()):
    """Run ``fn()`` and return (bytes of the distinct storages autograd saved for backward, fn's result).
    Storages of the tensors in ``exclude`` (pass the model's parameters: they are model state, not
    activations) are not counted; their bf16 cast copies are."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[(st.data_ptr(), str(t.device))] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
