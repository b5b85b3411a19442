"""The MergeDNA model: the four modules of the paper (docs/method.md §3–6), top to bottom.

    bases (B, N) ──Local Encoder φ──▶ tokens (B, L, D) ──Latent Encoder ψ──▶ (B, L, D) [or (B, K, D) merged]
       ▲                         (local attention + merge)      (full attention, optional global merge)
       │                                                                    │
    logits (B, N, 4) ◀──Local Decoder ζ── un-merge by ``assign`` ◀──Latent Decoder ω── un-merge by ``assign2``

``MergeDNAModel`` is φ + ψ, what downstream tasks use. ``MergeDNAForPretraining`` adds ω, ζ
and the base head. The heads for fine-tuning live in ``heads.py``; the objectives in
``objectives.py``. Everything runs on one device; mixed precision (bf16 autocast),
compilation and data parallelism are applied from outside.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Block, key_bias, rotary_cos_sin
from .config import MergeDNAConfig
from .merging import (Tokens, adjacent_merge_plan, apply_merge, bipartite_merge_plan, compose_assign,
                      fixed_span_plan, merge_budget, target_lengths, unmerge)
from .pretrained import WEIGHTS_NAME, MergeDNAPreTrainedModel, read_weights
from .seqio import SequenceFileError
from .vocab import MASK, NUM_BASES, PAD, VOCAB_SIZE


@dataclass
class LocalEncoderOutput:
    tokens: Tokens  # L merged tokens per sequence: z (B, L, D), sizes, positions, mask
    assign: torch.Tensor  # (B, N) long: base -> token (meaningful on real bases only)
    base_mask: torch.Tensor  # (B, N) bool
    lengths_cpu: torch.Tensor | None = None  # (B,) real bases per row, on the host
    hidden_states: tuple[torch.Tensor, ...] | None = None  # each block's output, before its merge


@dataclass
class LatentEncoderOutput:
    tokens: Tokens  # (B, L, D), or (B, K, D) when the global merge ran; z is normalised
    assign: torch.Tensor | None  # (B, L) long: local token -> latent group, when merging
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MergeDNAEncoderOutput:
    """What φ + ψ produce. ``last_hidden_state`` rows are tokens; use ``assign`` to map bases to them."""

    last_hidden_state: torch.Tensor  # (B, L, D) or (B, K, D)
    token_mask: torch.Tensor  # (B, L|K) bool
    token_sizes: torch.Tensor  # (B, L|K) float: bases per token
    assign: torch.Tensor  # (B, N): base -> local token
    base_mask: torch.Tensor  # (B, N)
    local: LocalEncoderOutput
    latent_assign: torch.Tensor | None = None  # (B, L): local token -> latent group
    latent_counts: torch.Tensor | None = None  # (B, K): local tokens per latent group
    hidden_states: tuple[torch.Tensor, ...] | None = None  # Local then Latent Encoder block outputs
    cls_state: torch.Tensor | None = None  # (B, D): the CLS token's output, when config.cls_token


@dataclass
class MergeDNAPretrainingOutput:
    logits: torch.Tensor  # (B, N, 4) base logits
    encoder: MergeDNAEncoderOutput
    loss: torch.Tensor | None = None


class LocalEncoder(nn.Module):
    """φ, the learned tokenizer: embedding, then blocks of local attention each followed by a merge."""

    def __init__(self, cfg: MergeDNAConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.hidden_size)
        k = cfg.conv_stem
        # groups=D: one width-k filter per channel; across channels a random linear map of the one-hot window,
        # which the first block's MLP can turn into k-mer features (config.conv_stem)
        self.stem = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2, groups=cfg.hidden_size) if k else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.local_encoder_layers))
        n_group = cfg.local_encoder_layers if cfg.tokenizer == "learned" else 0
        # one grouping embedding per block: D -> d_g, compared by cosine (DTEM)
        self.group_proj = nn.ModuleList(nn.Linear(cfg.hidden_size, cfg.group_dim, bias=False) for _ in range(n_group))

    def grouping_metric(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """Block i's grouping embedding (B, n, d_g), L2-normalised, on a detached copy of the tokens (DTEM:
        the merge loss shapes only the grouping embedding, never the token features it reads).
        ``merge_grad="none"`` cuts its gradient entirely (the ablation)."""
        metric = F.normalize(self.group_proj[i](z.detach()).float(), dim=-1)
        return metric.detach() if self.cfg.merge_grad == "none" else metric

    def embed_bases(self, input_ids: torch.Tensor, base_mask: torch.Tensor) -> torch.Tensor:
        """(B, N) ids -> (B, N, D): the base embeddings, plus the convolution stem's output where there is one.
        Padding is zeroed before the convolution, so a sequence's vectors do not depend on its batch."""
        z = self.embed(input_ids)
        if self.stem is None:
            return z
        z = z * base_mask[..., None].to(z.dtype)
        return z + self.stem(z.transpose(1, 2)).transpose(1, 2)

    def forward(self, input_ids, base_mask, merge_ratio=None, output_hidden_states=False, *,
                segments: torch.Tensor | None = None, num_segments: int = 2,
                lengths_cpu: torch.Tensor | None = None) -> LocalEncoderOutput:
        """input_ids, base_mask (B, N). ``merge_ratio`` L/N: a float or (B,) (config default).
        ``segments`` (B, N) long in [0, ``num_segments``): bases of different segments never share a token
        and each segment is compressed at the ratio on its own (pretraining pass 3: masked vs visible bases).
        ``lengths_cpu`` (B,): real bases per row, known on the host (else read once from the device)."""
        cfg = self.cfg
        B, N = input_ids.shape
        ar = torch.arange(N, device=input_ids.device)
        if lengths_cpu is None:
            lengths_cpu = base_mask.sum(1).cpu()  # the forward's one device read
        tokens = Tokens(z=self.embed_bases(input_ids, base_mask), size=base_mask.float(), pos=ar.float().expand(B, N),
                        mask=base_mask, segment=segments, lengths_cpu=lengths_cpu)
        assign = ar.expand(B, N)
        ratio = cfg.merge_ratio if merge_ratio is None else merge_ratio
        steps = len(self.blocks)
        if segments is None:
            ratio_cpu = ratio.cpu() if torch.is_tensor(ratio) else ratio
            target = target_lengths(lengths_cpu, ratio_cpu, steps)  # (B,) on the host
        else:  # a budget per segment, from the real bases of each
            seg_len = torch.zeros(B, num_segments, dtype=torch.long, device=segments.device).scatter_add_(
                1, segments, base_mask.long())
            ratio_s = torch.as_tensor(ratio, dtype=torch.float32, device=segments.device).reshape(-1, 1)
            target = target_lengths(seg_len, ratio_s, steps)  # (B, S) on the device
        temperature = cfg.merge_temperature if self.training and torch.is_grad_enabled() else None
        hidden = []
        for i, block in enumerate(self.blocks):
            cos, sin = rotary_cos_sin(tokens.pos, cfg.head_dim, cfg.rope_theta)
            bias = key_bias(tokens.mask, tokens.size if cfg.proportional_attention else None, tokens.padded)
            tokens = replace(tokens, z=block(tokens.z, cos, sin, bias, window=cfg.window_size))
            if output_hidden_states:
                hidden.append(tokens.z)
            if cfg.tokenizer != "learned":
                continue
            metric = self.grouping_metric(i, tokens.z)  # (B, n, d_g)
            if segments is None:
                r_cpu = merge_budget(tokens.lengths_cpu, target, steps - i)
                plan = adjacent_merge_plan(metric, tokens.mask, r_cpu.to(metric.device), cfg.merge_scope,
                                           cfg.window_size, temperature=temperature,
                                           lengths_cpu=tokens.lengths_cpu, r_cpu=r_cpu)
            else:
                seg_now = torch.zeros_like(target).scatter_add_(1, tokens.segment, tokens.mask.long())
                plan = adjacent_merge_plan(metric, tokens.mask, merge_budget(seg_now, target, steps - i),
                                           cfg.merge_scope, cfg.window_size, segment=tokens.segment,
                                           temperature=temperature)
            tokens, assign = apply_merge(tokens, plan), compose_assign(assign, plan)
        if cfg.tokenizer == "fixed":
            plan = fixed_span_plan(tokens.mask, cfg.fixed_span, tokens.lengths_cpu)
            tokens, assign = apply_merge(tokens, plan), compose_assign(assign, plan)
        if tokens.lengths_cpu is None:  # segmented merging: the lengths were only on the device
            tokens = replace(tokens, lengths_cpu=tokens.lengths.cpu())
        return LocalEncoderOutput(tokens=replace(tokens, segment=None), assign=assign, base_mask=base_mask,
                                  lengths_cpu=lengths_cpu,
                                  hidden_states=tuple(hidden) if output_hidden_states else None)


class LatentEncoder(nn.Module):
    """ψ: full attention over the L tokens; with ``merge_ratio`` set, ToMe global merging to K = ratio·L."""

    def __init__(self, cfg: MergeDNAConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.latent_encoder_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def forward(self, tokens: Tokens, merge_ratio: float | None = None,
                output_hidden_states=False) -> LatentEncoderOutput:
        """``merge_ratio`` is K/L (the config's ``latent_merge_ratio`` in pretraining pass 2); None: no merging."""
        cfg = self.cfg
        merging = merge_ratio is not None
        assign = None
        if tokens.lengths_cpu is None:
            tokens = replace(tokens, lengths_cpu=tokens.lengths.cpu())
        if merging:
            B, L = tokens.mask.shape
            # ToMe's proportional attention here counts local tokens per group (1 before any merge)
            tokens = replace(tokens, count=tokens.mask.float())
            assign = torch.arange(L, device=tokens.mask.device).expand(B, L)
            target = target_lengths(tokens.lengths_cpu, merge_ratio, len(self.blocks))
        cos, sin = rotary_cos_sin(tokens.pos, cfg.head_dim, cfg.rope_theta)
        bias = key_bias(tokens.mask, padded=tokens.padded)
        hidden = []
        for i, block in enumerate(self.blocks):
            tokens = replace(tokens, z=block(tokens.z, cos, sin, bias))
            if output_hidden_states:
                hidden.append(tokens.z)
            if merging:
                r_cpu = merge_budget(tokens.lengths_cpu, target, len(self.blocks) - i)
                # similarity on the block output itself: the space the merged mean lives in (fp32 inside)
                plan = bipartite_merge_plan(F.normalize(tokens.z.float(), dim=-1), tokens.mask,
                                            r_cpu.to(tokens.mask.device), tokens.lengths_cpu, r_cpu)
                tokens, assign = apply_merge(tokens, plan), compose_assign(assign, plan)
                cos, sin = rotary_cos_sin(tokens.pos, cfg.head_dim, cfg.rope_theta)
                bias = key_bias(tokens.mask, tokens.count if cfg.proportional_attention else None, tokens.padded)
        tokens = replace(tokens, z=self.norm(tokens.z))
        return LatentEncoderOutput(tokens=tokens, assign=assign,
                                   hidden_states=tuple(hidden) if output_hidden_states else None)


class LatentDecoder(nn.Module):
    """ω: full attention over the L local tokens (pretraining only)."""

    def __init__(self, cfg: MergeDNAConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.latent_decoder_layers))

    def forward(self, z: torch.Tensor, local: Tokens) -> torch.Tensor:
        """z (B, L, D) at local-token resolution; ``local`` gives positions and mask."""
        cos, sin = rotary_cos_sin(local.pos, self.cfg.head_dim, self.cfg.rope_theta)
        bias = key_bias(local.mask, padded=local.padded)
        for block in self.blocks:
            z = block(z, cos, sin, bias)
        return z


class LocalDecoder(nn.Module):
    """ζ: un-merge tokens to bases by gather (Sᵀz), then local attention over windows of bases."""

    def __init__(self, cfg: MergeDNAConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.local_decoder_layers))
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def forward(self, z: torch.Tensor, assign: torch.Tensor, base_mask: torch.Tensor,
                padded: bool | None = None) -> torch.Tensor:
        """z (B, L, D), assign (B, N), base_mask (B, N) -> base features (B, N, D). ``padded``: whether
        any row has padding, if the host knows (saves a device read)."""
        x = unmerge(z, assign)  # (B, N, D); no skip from the input bases: everything goes through tokens
        B, N = assign.shape
        pos = torch.arange(N, device=x.device, dtype=torch.float32).expand(B, N)
        cos, sin = rotary_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta)
        bias = key_bias(base_mask, padded=padded)
        for block in self.blocks:
            x = block(x, cos, sin, bias, window=self.cfg.window_size)
        return self.norm(x)


def prepare_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Check ids and return the base mask (B, N). Padding must sit at the end of each row."""
    return check_inputs(input_ids, attention_mask)[0]


def check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ids; return the base mask (B, N) and the real lengths (B,) on the host, with one device read."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    mask = input_ids != PAD if attention_mask is None else attention_mask.bool()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    if not input_ids.numel():
        return mask, mask.sum(1).cpu()
    flags = torch.stack([(input_ids < 0).any() | (input_ids >= VOCAB_SIZE).any(),
                         (mask[:, 1:] & ~mask[:, :-1]).any(), (~mask[:, 0]).any()]).long()
    read = torch.cat([flags, mask.sum(1)]).cpu()  # the one device read
    flags, lengths = read[:3].tolist(), read[3:]
    if flags[0]:
        raise ValueError(f"input_ids must lie in [0, {VOCAB_SIZE}); encode sequences with mergedna.vocab.encode")
    if flags[1]:
        raise ValueError("attention_mask must be right-padded: real bases first, padding at the end of each row")
    if flags[2]:
        raise ValueError("every sequence needs at least one real base")
    return mask, lengths


class MergeDNAModel(MergeDNAPreTrainedModel):
    """φ + ψ: bases -> learned tokens -> contextual token vectors. What downstream tasks build on."""

    def __init__(self, config: MergeDNAConfig):
        super().__init__(config)
        self.local_encoder = LocalEncoder(config)
        self.latent_encoder = LatentEncoder(config)
        if config.cls_token:  # a learned token that never merges: the sequence's absolute anchor
            self.cls = nn.Parameter(torch.randn(config.hidden_size) * config.init_std)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, merge_ratio=None, latent_merge_ratio=None,
                output_hidden_states=False) -> MergeDNAEncoderOutput:
        """input_ids (B, N) right-padded with PAD; ``merge_ratio`` (float or (B,)) sets L/N (config
        default); ``latent_merge_ratio`` turns on the global merge to K = ratio·L."""
        base_mask, lengths = check_inputs(input_ids, attention_mask)
        local = self.local_encoder(input_ids, base_mask, merge_ratio, output_hidden_states, lengths_cpu=lengths)
        if not self.config.cls_token:
            return encoder_output(local, self.latent_encoder(local.tokens, latent_merge_ratio, output_hidden_states))
        if latent_merge_ratio is not None:
            raise ValueError("cls_token does not combine with the latent global merge")
        # CLS at position -1, just before base 0: rotary gives every token its distance to it.
        # Prepended after the Local Encoder, so it never merges; size 0, so base pooling ignores it.
        t = local.tokens
        B = t.z.shape[0]
        col = t.pos.new_full((B, 1), -1.0)
        with_cls = replace(t, z=torch.cat([self.cls.to(t.z.dtype).expand(B, 1, -1), t.z], 1),  # (B, 1 + L, D)
                           size=torch.cat([torch.zeros_like(col), t.size], 1), pos=torch.cat([col, t.pos], 1),
                           mask=torch.cat([t.mask.new_ones(B, 1), t.mask], 1), segment=None,
                           lengths_cpu=None if t.lengths_cpu is None else t.lengths_cpu + 1)
        latent = self.latent_encoder(with_cls, None, output_hidden_states)
        lt = latent.tokens
        z = lt.z
        latent = replace(latent, tokens=replace(lt, z=z[:, 1:], size=lt.size[:, 1:], pos=lt.pos[:, 1:],
                                                mask=lt.mask[:, 1:], lengths_cpu=t.lengths_cpu))
        return replace(encoder_output(local, latent), cls_state=z[:, 0])


def encoder_output(local: LocalEncoderOutput, latent: LatentEncoderOutput) -> MergeDNAEncoderOutput:
    hidden = None
    if local.hidden_states is not None and latent.hidden_states is not None:
        hidden = local.hidden_states + latent.hidden_states
    return MergeDNAEncoderOutput(
        last_hidden_state=latent.tokens.z, token_mask=latent.tokens.mask, token_sizes=latent.tokens.size,
        assign=local.assign, base_mask=local.base_mask, local=local, latent_assign=latent.assign,
        latent_counts=latent.tokens.count if latent.assign is not None else None, hidden_states=hidden)


DECODER_PARTS = ("latent_decoder.", "local_decoder.", "lm_head.")  # what MergeDNAForPretraining adds to φ + ψ


class MergeDNAForPretraining(MergeDNAPreTrainedModel):
    """φ + ψ + ω + ζ + a 4-way base head: reconstructs every base through the merged tokens."""

    def __init__(self, config: MergeDNAConfig, encoder: MergeDNAModel | None = None):
        """``encoder``: an existing φ + ψ to decode from (shared, e.g. a classifier's, for the auxiliary masked
        loss of fine-tuning); None builds a new one."""
        super().__init__(config)
        self.mergedna = MergeDNAModel(config) if encoder is None else encoder
        self.latent_decoder = LatentDecoder(config)
        self.local_decoder = LocalDecoder(config)
        self.lm_head = nn.Linear(config.hidden_size, NUM_BASES, bias=False)
        self.init_weights([self.latent_decoder, self.local_decoder, self.lm_head])

    def load_decoders(self, directory) -> int:
        """Load ω, ζ and the base head from checkpoint ``directory``, without reading its encoder (which may be
        shared here). A checkpoint without decoders (a classifier's, a bare encoder's) leaves them as they are;
        one with only some of them, or of other shapes, is an error naming the file. Returns the tensors loaded."""
        path = Path(directory) / WEIGHTS_NAME
        state = read_weights(path, keep=lambda name: name.startswith(DECODER_PARTS))
        if not state:
            return 0
        own = {k: v for k, v in self.state_dict().items() if k.startswith(DECODER_PARTS)}
        wrong = sorted(set(own) ^ set(state)) + sorted(k for k in own if k in state and own[k].shape != state[k].shape)
        if wrong:
            raise SequenceFileError(f"its decoders do not match this model's config ({len(wrong)} tensors missing, "
                                    f"extra or of another shape, e.g. {wrong[0]})", file=path)
        self.load_state_dict(state, strict=False)
        return len(state)

    def decode(self, latent_z: torch.Tensor, local: LocalEncoderOutput,
               latent_assign: torch.Tensor | None = None) -> torch.Tensor:
        """Latent tokens -> base logits (B, N, 4). ``latent_assign`` un-merges K groups back to L first."""
        z = latent_z if latent_assign is None else unmerge(latent_z, latent_assign)  # (B, L, D)
        z = self.latent_decoder(z, local.tokens)
        padded = None if local.lengths_cpu is None else bool((local.lengths_cpu < local.assign.shape[1]).any())
        return self.lm_head(self.local_decoder(z, local.assign, local.base_mask, padded))

    def masked_logits(self, input_ids: torch.Tensor, masked: torch.Tensor, attention_mask=None, merge_ratio=None,
                      lengths_cpu: torch.Tensor | None = None) -> tuple[torch.Tensor, LocalEncoderOutput]:
        """Base logits (B, N, 4) with the bases marked in ``masked`` (B, N) replaced by MASK, tokenized as
        pretraining's pass 3 does: masked and visible bases never share a token and each is compressed at
        ``merge_ratio`` on its own (docs/method.md §7). Also returns that pass's Local Encoder output."""
        if lengths_cpu is None:
            base_mask, lengths_cpu = check_inputs(input_ids, attention_mask)
        else:
            base_mask = input_ids != PAD if attention_mask is None else attention_mask.bool()
        local = self.mergedna.local_encoder(input_ids.masked_fill(masked, MASK), base_mask, merge_ratio,
                                            segments=masked.long(), lengths_cpu=lengths_cpu)
        latent = self.mergedna.latent_encoder(local.tokens)
        return self.decode(latent.tokens.z, local), local

    def forward(self, input_ids, attention_mask=None, merge_ratio=None, latent_merge_ratio=None,
                labels=None, output_hidden_states=False) -> MergeDNAPretrainingOutput:
        """``labels`` (B, N) base ids with -100 (or N/PAD) where no loss is wanted."""
        enc = self.mergedna(input_ids, attention_mask, merge_ratio, latent_merge_ratio, output_hidden_states)
        logits = self.decode(enc.last_hidden_state, enc.local, enc.latent_assign)
        loss = base_cross_entropy(logits, labels) if labels is not None else None
        return MergeDNAPretrainingOutput(logits=logits, encoder=enc, loss=loss)


def base_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is a base (0–3); N, PAD, MASK and -100 are ignored."""
    valid = (labels >= 0) & (labels < NUM_BASES)
    target = torch.where(valid, labels, -100)
    loss = F.cross_entropy(logits.float().reshape(-1, NUM_BASES), target.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return loss / valid.sum().clamp_min(1)  # 0, not NaN, when nothing is scored
