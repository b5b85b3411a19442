"""Analytical FLOP counts: MergeDNA's passes and the peer encoders, matmuls only.

What is counted: every matrix multiply, as 2·m·n·k FLOPs (one multiply and one add per
term). Everything else (norms, softmax, rotary, SiLU/GELU, the merge's scatters and
gathers, un-merging, embeddings, the loss, the optimiser) is treated as free: it moves
memory but does few FLOPs, so "achieved FLOP/s" computed from these counts is the
useful-work rate, and its ratio to the machine's matmul peak is the utilisation.

Per transformer block at n tokens of width D, SwiGLU width F, attention context c::

    qkv + proj       2·n·D·3D + 2·n·D·D = 8·n·D²
    SwiGLU           2·n·D·2F + 2·n·F·D = 6·n·D·F
    attention        q·kᵀ and p·v: 2 × 2·n·c·D = 4·n·c·D

Full attention (Latent Encoder and Decoder): c = n. Local attention (Local Encoder over
tokens, Local Decoder over bases): c = w = ``window_size``, and n is the token count padded
up to a multiple of w, because the model pads the last window and computes it whole.

MergeDNA passes, for B sequences of N bases (no padding; r = L/N):

* Local Encoder φ: block i runs at n_i tokens, n_0 = N, n_{i+1} = n_i − r_i with r_i from
  :func:`mergedna.merging.merge_budget` towards :func:`mergedna.merging.target_lengths`
  (the model's own functions, so the counts are the model's); after each block the
  grouping projection D → d_g costs 2·n_i·D·d_g. Output: L = n_k tokens.
* Latent Encoder ψ and Latent Decoder ω: full-attention blocks at L tokens.
* Local Decoder ζ: local-attention blocks at N bases, then the base head 2·N·D·4.
* Latent-merge pass (pretraining pass 2): ψ with ToMe global merging, block i at m_i
  tokens (m_0 = L, merged towards K = ``latent_merge_ratio``·L the same way), each block
  followed by the bipartite similarity a·bᵀ of ⌈m_i/2⌉ × ⌊m_i/2⌋ tokens (2·⌈m/2⌉·⌊m/2⌋·D);
  then ω at L, ζ at N and the head. φ does not run: pass 1's output is reused.
* Inference (embedding): φ at the inference ratio (``merge_ratio``), then ψ without merging.
* Pretraining step: pass 1 (MTR) + pass 2 (latent MTR) + pass 3 (AMTM: the full model again
  on masked input; its token counts equal pass 1's, the budget depends on lengths only).
  Backward = 2 × forward (a gradient for the input and one for the weight per matmul),
  except the latent-merge similarity, which only ranks pairs and has no gradient path.

Peers (``transformers`` ``EsmForMaskedLM`` / ``BertForMaskedLM``), per layer at n tokens::

    q, k, v, out     4 × 2·n·D·D = 8·n·D²
    FFN (GELU)       2·n·D·I + 2·n·I·D = 4·n·D·I
    attention        4·n·n·D

plus, for MLM, the head's dense D → D and decoder D → V over all n tokens (HF scores every
position). Training = 3 × the MLM forward; inference = the encoder alone.

Counts are checked against ``torch.utils.flop_counter.FlopCounterMode`` in
``tests/test_flops.py`` (with the math SDPA backend, whose matmuls the counter sees).
"""

from __future__ import annotations

import math

import torch

from .config import MergeDNAConfig
from .merging import merge_budget, target_lengths

BASE_HEAD_OUT = 4  # the pretraining head's 4 base logits


def linear(tokens: int, d_in: int, d_out: int) -> int:
    """FLOPs of a dense layer applied to ``tokens`` rows: 2·tokens·d_in·d_out."""
    return 2 * tokens * d_in * d_out


def block(cfg: MergeDNAConfig, n: int, window: int | None = None) -> int:
    """One MergeDNA block (attention + SwiGLU) over n tokens; ``window`` w for local attention, else full."""
    D, F = cfg.hidden_size, cfg.ffn_size
    if window is None:
        rows, context = n, n
    else:
        rows, context = math.ceil(n / window) * window, window  # the last window is padded and computed
    return linear(n, D, 3 * D) + linear(n, D, D) + linear(n, D, 2 * F) + linear(n, F, D) + 4 * rows * context * D


def _merge_counts(n: int, ratio: float, steps: int) -> list[int]:
    """Token counts [n_0, ..., n_steps] of ``steps`` blocks each followed by a merge, as the model budgets them."""
    lengths = torch.tensor([n])
    target = target_lengths(lengths, ratio, steps)
    counts = [n]
    for i in range(steps):
        lengths = lengths - merge_budget(lengths, target, steps - i)
        counts.append(int(lengths[0]))
    return counts


def local_encoder_counts(cfg: MergeDNAConfig, N: int, ratio: float | None = None) -> list[int]:
    """Tokens entering each Local Encoder block, then the output length L: a list of blocks + 1 ints."""
    ratio = cfg.merge_ratio if ratio is None else ratio
    k = cfg.local_encoder_layers
    if cfg.tokenizer == "learned":
        return _merge_counts(N, ratio, k)
    out = N if cfg.tokenizer == "none" else math.ceil(N / cfg.fixed_span)
    return [N] * k + [out]


def latent_merge_counts(cfg: MergeDNAConfig, L: int) -> list[int]:
    """Tokens entering each Latent Encoder block when the global merge runs, then K."""
    return _merge_counts(L, cfg.latent_merge_ratio, cfg.latent_encoder_layers)


def local_encoder(cfg: MergeDNAConfig, N: int, ratio: float | None = None) -> dict[str, int]:
    """φ on one sequence of N bases: its blocks, and the grouping projections of the merges."""
    counts = local_encoder_counts(cfg, N, ratio)[:-1]
    grouping = sum(linear(n, cfg.hidden_size, cfg.group_dim) for n in counts) if cfg.tokenizer == "learned" else 0
    return {"local_encoder": sum(block(cfg, n, cfg.window_size) for n in counts), "grouping": grouping}


def _decoders(cfg: MergeDNAConfig, N: int, L: int) -> dict[str, int]:
    return {"latent_decoder": cfg.latent_decoder_layers * block(cfg, L),
            "local_decoder": cfg.local_decoder_layers * block(cfg, N, cfg.window_size),
            "lm_head": linear(N, cfg.hidden_size, BASE_HEAD_OUT)}


def _scale(parts: dict[str, int], batch: int) -> dict[str, int]:
    return {k: v * batch for k, v in parts.items()}


def mtr_pass(cfg: MergeDNAConfig, N: int, batch: int = 1, ratio: float | None = None) -> dict[str, int]:
    """Forward FLOPs of one full-model pass (pretraining pass 1 or 3), per component, for ``batch`` sequences."""
    L = local_encoder_counts(cfg, N, ratio)[-1]
    parts = {**local_encoder(cfg, N, ratio), "latent_encoder": cfg.latent_encoder_layers * block(cfg, L),
             **_decoders(cfg, N, L)}
    return _scale(parts, batch)


def latent_merge_pass(cfg: MergeDNAConfig, N: int, batch: int = 1, ratio: float | None = None,
                      decoders: bool = True) -> dict[str, int]:
    """Forward FLOPs of pretraining pass 2: ψ with global merging from L towards K (+ ω, ζ, head if ``decoders``)."""
    L = local_encoder_counts(cfg, N, ratio)[-1]
    counts = latent_merge_counts(cfg, L)[:-1]
    D = cfg.hidden_size
    parts = {"latent_encoder": sum(block(cfg, m) for m in counts),
             "latent_merge_similarity": sum(2 * math.ceil(m / 2) * (m // 2) * D for m in counts)}
    if decoders:
        parts.update(_decoders(cfg, N, L))
    return _scale(parts, batch)


def inference(cfg: MergeDNAConfig, N: int, batch: int = 1, ratio: float | None = None) -> dict[str, int]:
    """Forward FLOPs of the embedding model φ + ψ (no merging in ψ, no decoders)."""
    L = local_encoder_counts(cfg, N, ratio)[-1]
    return _scale({**local_encoder(cfg, N, ratio), "latent_encoder": cfg.latent_encoder_layers * block(cfg, L)},
                  batch)


def pretraining_step(cfg: MergeDNAConfig, N: int, batch: int = 1, ratio: float = 0.5,
                     lambda_latent: float = 0.25, masking: str = "amtm") -> dict:
    """FLOPs of one pretraining step (``MergeDNAPretrainer`` with the objective ``"mergedna"``),
    forward and backward, at a fixed ratio L/N.

    Returns {"passes": {name: forward FLOPs}, "components": {component: forward FLOPs summed over
    passes}, "forward", "backward", "total"}. Pass 2 runs when ``lambda_latent`` > 0 or AMTM needs
    its groups (then without decoders or gradient); pass 3 unless ``masking == "none"``.
    """
    passes = {"mtr": mtr_pass(cfg, N, batch, ratio)}
    no_grad = 0
    if lambda_latent > 0 or masking == "amtm":
        p2 = latent_merge_pass(cfg, N, batch, ratio, decoders=lambda_latent > 0)
        passes["latent_mtr"] = p2
        no_grad += p2["latent_merge_similarity"] if lambda_latent > 0 else sum(p2.values())
    if masking != "none":
        passes["amtm"] = mtr_pass(cfg, N, batch, ratio)
    components: dict[str, int] = {}
    for parts in passes.values():
        for k, v in parts.items():
            components[k] = components.get(k, 0) + v
    forward = sum(components.values())
    # the grouping projections read detached tokens: their backward is the weight gradient alone (1x, not 2x)
    backward = 2 * (forward - no_grad) - components.get("grouping", 0)
    return {"passes": {k: sum(v.values()) for k, v in passes.items()}, "components": components,
            "forward": forward, "backward": backward, "total": forward + backward}


def peer_encoder(hidden: int, layers: int, intermediate: int, n_tokens: int, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of a BERT/ESM encoder stack over ``n_tokens`` tokens (full attention)."""
    D, n = hidden, n_tokens
    per_layer_linear = 4 * linear(n, D, D) + linear(n, D, intermediate) + linear(n, intermediate, D)
    return {"encoder_linear": batch * layers * per_layer_linear, "encoder_attention": batch * layers * 4 * n * n * D}


def peer_mlm(hidden: int, layers: int, intermediate: int, vocab: int, n_tokens: int, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of ``EsmForMaskedLM`` / ``BertForMaskedLM``: the encoder and the MLM head on every token."""
    parts = peer_encoder(hidden, layers, intermediate, n_tokens, batch)
    parts["mlm_head"] = batch * (linear(n_tokens, hidden, hidden) + linear(n_tokens, hidden, vocab))
    return parts


def peer_training_step(hidden: int, layers: int, intermediate: int, vocab: int, n_tokens: int,
                       batch: int = 1) -> dict:
    """FLOPs of one MLM training step (forward + backward = 3 × forward)."""
    forward = sum(peer_mlm(hidden, layers, intermediate, vocab, n_tokens, batch).values())
    return {"forward": forward, "backward": 2 * forward, "total": 3 * forward}
