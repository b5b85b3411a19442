"""Downstream heads (SPEC §8).

* Sequence level: both decoders dropped; the Latent Encoder's tokens are pooled over bases
  (a size-weighted mean, so every base counts once whatever its token length) into an MLP.
* Base level: the Local Decoder is kept (un-merge + local attention over bases) and a
  per-base linear head sits on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import MergeDNAConfig
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


class MergeDNAForSequenceClassification(MergeDNAPreTrainedModel):
    def __init__(self, config: MergeDNAConfig):
        super().__init__(config)
        self.mergedna = MergeDNAModel(config)
        D = config.hidden_size
        self.classifier = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Dropout(config.classifier_dropout),
                                        nn.Linear(D, config.num_labels))
        self.init_weights([self.classifier])

    def forward(self, input_ids, attention_mask=None, labels=None, merge_ratio=None,
                output_hidden_states=False) -> SequenceClassifierOutput:
        enc = self.mergedna(input_ids, attention_mask, merge_ratio, output_hidden_states=output_hidden_states)
        pooled = pool_bases(enc.last_hidden_state, enc.token_sizes, enc.token_mask)
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
