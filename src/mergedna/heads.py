"""Downstream heads (docs/method.md §8).

* Sequence level: both decoders dropped; the Latent Encoder's output is pooled into an MLP.
  ``config.pooling`` says how (:class:`SequencePooler`): ``mean``, the paper's size-weighted mean
  over bases (every base counts once whatever its token length); ``max``, the largest value of each
  feature over the real tokens (a motif anywhere in the input shows as one high value, which a mean
  over 100 bases dilutes: GUE mouse/0, whose negatives keep the positives' dinucleotide make-up); ``cls``, the output of a learned
  token that never merges (``config.cls_token``, see :class:`~mergedna.model.MergeDNAModel`);
  ``attention``, attention pooling over bases (tokens un-merged by ``assign``) with a learned
  absolute-position term; ``flatten``, per-base features projected to a few channels and flattened
  into a linear layer, as the supervised CNN baselines do; ``mean_flatten``, the sum of ``mean`` and
  ``flatten`` (a composition path and a position path). The last three see where in the input a
  feature sits, which rotary positions and mean pooling do not (issue 14); they cover
  ``config.pool_length`` bases (bases beyond it: the position term is clamped, flatten drops them).
  ``config.pool_bin`` > 1 makes the flatten path coarse, as the CNN baseline's max-pools do: each channel's
  largest value over bins of that many bases is flattened, so a motif that shifts a few bases between
  sequences lands in the same input, and the wide layer has ``pool_bin`` times fewer weights to fit.
* Base level: the Local Decoder is kept (un-merge + local attention over bases) and a
  per-base linear head sits on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MergeDNAConfig
from .merging import unmerge
from .model import LocalDecoder, MergeDNAEncoderOutput, MergeDNAModel
from .pretrained import MergeDNAPreTrainedModel


@dataclass
class SequenceClassifierOutput:
    logits: torch.Tensor  # (B, C)
    pooled: torch.Tensor  # (B, D)
    encoder: MergeDNAEncoderOutput
    loss: torch.Tensor | None = None


@dataclass
class TokenClassifierOutput:
    logits: torch.Tensor  # (B, N, C), one row per base
    encoder: MergeDNAEncoderOutput
    loss: torch.Tensor | None = None


def pool_bases(z: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over bases of their tokens' vectors = Σ s_t z_t / Σ s_t over real tokens. (B, n, D) -> (B, D)."""
    w = (sizes.float() * mask).unsqueeze(-1)  # (B, n, 1)
    return (z.float() * w).sum(1) / w.sum(1).clamp_min(1e-6)


POOL_HEADS = 4  # queries of the attention pooler
FLATTEN_CHANNELS = 16  # per-base channels the flatten pooler keeps
HEAD_LR_RULES = ("fan_in", "sqrt_fan_in", "none")  # SequencePooler.lr_scales
FLATTEN_POOLINGS = ("flatten", "mean_flatten")  # the heads with a flatten layer
SIZED_POOLINGS = ("attention", *FLATTEN_POOLINGS)  # the heads that cover config.pool_length bases


def binned_max(feats: torch.Tensor, real: torch.Tensor, size: int) -> torch.Tensor:
    """(B, length, c) per-base features -> (B, ceil(length / size), c), the largest value of each channel over
    each run of ``size`` bases; ``real`` (B, length) marks real bases (padding never wins; an all-padding bin is 0)."""
    B, length, c = feats.shape
    bins = -(-length // size)
    real = F.pad(real, (0, bins * size - length))  # (B, bins * size)
    feats = F.pad(feats, (0, 0, 0, bins * size - length)).masked_fill(~real[..., None], float("-inf"))
    pooled = feats.reshape(B, bins, size, c).amax(2)
    return pooled.masked_fill(~real.reshape(B, bins, size).any(2)[..., None], 0.0)


class SequencePooler(nn.Module):
    """Encoder output -> one (B, D) vector per sequence, by ``config.pooling`` (module docstring)."""

    def __init__(self, config: MergeDNAConfig):
        super().__init__()
        self.kind, D = config.pooling, config.hidden_size
        self.length = config.pool_length or config.max_length
        if self.kind == "attention":
            self.pos = nn.Embedding(self.length, D)  # absolute base position
            self.query = nn.Linear(D, POOL_HEADS, bias=False)
            self.out = nn.Linear(POOL_HEADS * D, D)
        elif self.kind in FLATTEN_POOLINGS:
            self.bin = config.pool_bin
            self.proj = nn.Linear(D, FLATTEN_CHANNELS)
            self.out = nn.Linear(-(-self.length // self.bin) * FLATTEN_CHANNELS, D)

    def lr_scales(self, rule: str) -> dict[str, float]:
        """Learning-rate multiples for this head's parameters (names relative to the pooler). The flatten
        layer reads ``pool_length × 16`` inputs, tens of times the hidden size: under Adam, whose steps
        have a fixed size per weight, its output moves in proportion to its fan-in, so at the encoder's lr
        it trains tens of times faster than any other layer and can fit batch noise before the encoder
        finds a signal (results/position_heads, GUE tf/0). ``rule``: ``fan_in`` scales its lr by hidden
        size / fan-in (as μP scales Adam's lr with width), ``sqrt_fan_in`` by the square root of that,
        ``none`` leaves it at the peak lr."""
        if rule not in HEAD_LR_RULES:
            raise ValueError(f"head lr rule must be one of {HEAD_LR_RULES}, got {rule!r}")
        if self.kind not in FLATTEN_POOLINGS or rule == "none":
            return {}
        ratio = self.proj.in_features / self.out.in_features
        return {"out.weight": ratio if rule == "fan_in" else ratio ** 0.5}

    def forward(self, enc: MergeDNAEncoderOutput) -> torch.Tensor:
        if self.kind == "mean":
            return pool_bases(enc.last_hidden_state, enc.token_sizes, enc.token_mask)
        if self.kind == "max":
            z = enc.last_hidden_state
            return z.masked_fill(~enc.token_mask[..., None], torch.finfo(z.dtype).min).amax(1)
        if self.kind == "cls":
            return enc.cls_state
        x = unmerge(enc.last_hidden_state, enc.assign)  # (B, N, D): each base its token's vector
        mask = enc.base_mask
        B, N, D = x.shape
        if self.kind == "attention":
            idx = torch.arange(N, device=x.device).clamp_max(self.length - 1)
            x = x + self.pos(idx).to(x.dtype)  # (B, N, D)
            scores = self.query(x).float().masked_fill(~mask[..., None], float("-inf"))  # (B, N, H)
            weights = scores.softmax(1).to(x.dtype)
            pooled = torch.einsum("bnh,bnd->bhd", weights, x)  # (B, H, D)
            return self.out(pooled.reshape(B, POOL_HEADS * D))
        feats = self.proj(x) * mask[..., None]  # (B, N, c), zero on padding
        feats = F.pad(feats[:, : self.length], (0, 0, 0, max(0, self.length - N)))  # (B, length, c)
        if self.bin > 1:  # each channel's largest value over a bin of bases: a motif may shift inside its bin
            real = F.pad(mask[:, : self.length], (0, max(0, self.length - N)))  # (B, length), as feats
            feats = binned_max(feats, real, self.bin)  # (B, ceil(length / bin), c)
        flat = self.out(feats.reshape(B, -1))
        if self.kind == "mean_flatten":  # both paths: composition (mean) and position (flatten)
            return pool_bases(enc.last_hidden_state, enc.token_sizes, enc.token_mask).to(flat.dtype) + flat
        return flat


class MergeDNAForSequenceClassification(MergeDNAPreTrainedModel):
    def __init__(self, config: MergeDNAConfig):
        super().__init__(config)
        self.mergedna = MergeDNAModel(config)
        D = config.hidden_size
        self.pooler = SequencePooler(config)
        self.classifier = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Dropout(config.classifier_dropout),
                                        nn.Linear(D, config.num_labels))
        self.init_weights([self.pooler, self.classifier])

    def forward(self, input_ids, attention_mask=None, labels=None, merge_ratio=None,
                output_hidden_states=False) -> SequenceClassifierOutput:
        enc = self.mergedna(input_ids, attention_mask, merge_ratio, output_hidden_states=output_hidden_states)
        pooled = self.pooler(enc)
        logits = self.classifier(pooled)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(logits=logits, pooled=pooled, encoder=enc, loss=loss)


class MergeDNAForTokenClassification(MergeDNAPreTrainedModel):
    """Per-base labels (e.g. exon/intron): encoder -> Local Decoder -> linear head per base."""

    def __init__(self, config: MergeDNAConfig):
        super().__init__(config)
        self.mergedna = MergeDNAModel(config)
        self.local_decoder = LocalDecoder(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights([self.local_decoder, self.classifier])

    def forward(self, input_ids, attention_mask=None, labels=None, merge_ratio=None,
                output_hidden_states=False) -> TokenClassifierOutput:
        """``labels`` (B, N) with -100 on positions to ignore (padding is ignored automatically)."""
        enc = self.mergedna(input_ids, attention_mask, merge_ratio, output_hidden_states=output_hidden_states)
        x = self.local_decoder(enc.last_hidden_state, enc.assign, enc.base_mask)
        logits = self.classifier(x)
        loss = None
        if labels is not None:
            labels = labels.masked_fill(~enc.base_mask, -100)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                   ignore_index=-100)
        return TokenClassifierOutput(logits=logits, encoder=enc, loss=loss)
