"""Pretraining objectives (docs/method.md §7): MTR, latent MTR and AMTM, and the ablations.

Per step, with φ the Local Encoder (the tokenizer):

1. **MTR** (all parameters): tokenize with a ratio L/N drawn from N(0.5, 0.05²) clipped to
   [0.4, 0.6]; Latent Encoder (no merging), Latent Decoder, un-merge, Local Decoder;
   cross-entropy on every non-N base.
2. **Latent MTR** (φ frozen: pass 1's Local Encoder output, detached): Latent Encoder *with*
   ToMe global merging to K = L/2, un-merge to L, decoders, cross-entropy; weight λ.
3. **AMTM** (all parameters): from pass 2's groups each local token j in group i weighs 1/g_i²;
   masked spans are drawn in base coordinates from those weights (content-blind edges; the
   paper's "mask the drawn tokens" is ``mask_spans="tokens"``); the masked input is tokenized
   with visible and masked bases apart, each at the step's ratio; the whole model runs again
   without latent merging; cross-entropy on masked non-N bases only.

Total = L_MTR + λ·L_latent + L_AMTM. Randomness (the ratio, the Gumbel noise) comes from a
generator seeded by (seed, step, rank), so a resumed run reproduces the uninterrupted one exactly.

The module wraps the model so that one ``forward`` runs all passes: that is what
``DistributedDataParallel`` needs to synchronise gradients.

:class:`MaskedModellingLoss` reuses the plain ``mlm`` objective during fine-tuning, as an auxiliary loss
on the classifier's own encoder (docs/finetuning.md, ``--mlm-weight`` and ``--mlm-on-collapse``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .model import LocalEncoderOutput, MergeDNAForPretraining, base_cross_entropy, check_inputs
from .vocab import MASK, NUM_BASES

if TYPE_CHECKING:
    from .heads import MergeDNAForSequenceClassification

MASKINGS = ("amtm", "uniform", "none")
OBJECTIVES = ("mergedna", "mlm")
MASK_SPANS = ("bases", "tokens")
PASS3_BUDGETS = ("visible", "window")


@dataclass
class ObjectiveConfig:
    """Knobs of the pretraining loss; each paper ablation is one value here."""

    objective: str = "mergedna"  # "mergedna" (three passes) or "mlm" (plain masked modelling, for the no-merging ablation)
    lambda_latent: float = 0.25  # λ, weight of latent MTR; 0 switches the term off
    masking: str = "amtm"  # "amtm" (1/g² weights), "uniform" (no AMTM ablation) or "none" (no pass 3)
    ratio_mean: float | None = None  # L/N drawn per step from N(mean, std²); None: the model's merge_ratio
    ratio_std: float = 0.05  # 0 gives the fixed-ratio ablation
    ratio_min: float | None = None  # clip of the draw; None: mean - 2 std
    ratio_max: float | None = None  # None: mean + 2 std (the paper's [0.4, 0.6] around 0.5)
    mlm_mask_ratio: float = 0.15  # fraction of tokens masked by objective="mlm"
    mask_spans: str = "bases"  # "bases": spans drawn in base coordinates (content-blind edges); "tokens": the
    #                            chosen tokens' own spans, as the paper words it (edges leak the bases)
    pass3_budget: str = "visible"  # "visible": pass 3 compresses visible and masked bases apart, each at the
    #                                step's ratio; "window": one budget for the whole masked window

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        if self.mask_spans not in MASK_SPANS:
            raise ValueError(f"mask_spans must be one of {MASK_SPANS}, got {self.mask_spans!r}")
        if self.pass3_budget not in PASS3_BUDGETS:
            raise ValueError(f"pass3_budget must be one of {PASS3_BUDGETS}, got {self.pass3_budget!r}")
        if self.ratio_std < 0:
            raise ValueError(f"ratio_std must be >= 0, got {self.ratio_std}")
        given = [v for v in (self.ratio_min, self.ratio_mean, self.ratio_max) if v is not None]
        if given != sorted(given) or any(not 0 < v <= 1 for v in given):
            raise ValueError("need 0 < ratio_min <= ratio_mean <= ratio_max <= 1 (the merge ratio L/N)")

    def resolved(self, merge_ratio: float) -> "ObjectiveConfig":
        """A copy with the ratio's mean, min and max filled in: the mean from the model's ``merge_ratio``
        (one name for the paper's main knob, L/N), the clip at mean ± 2 std within (0, 1]."""
        mean = merge_ratio if self.ratio_mean is None else self.ratio_mean
        lo = max(mean - 2 * self.ratio_std, 0.01) if self.ratio_min is None else self.ratio_min
        hi = min(mean + 2 * self.ratio_std, 1.0) if self.ratio_max is None else self.ratio_max
        return replace(self, ratio_mean=round(mean, 6), ratio_min=round(lo, 6), ratio_max=round(hi, 6))

    def to_dict(self) -> dict:
        return asdict(self)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8191 + rank)


def device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``gen`` (so still a function of (seed, step, rank)): noise is
    drawn where it is used, with no host-to-device copy. On the CPU it is ``gen`` itself."""
    if torch.device(device).type == "cpu":
        return gen
    seed = int(torch.randint(0, 2**62, (), generator=gen))  # a CPU draw: no device read
    return torch.Generator(device=device).manual_seed(seed)


def sample_ratio(cfg: ObjectiveConfig, gen: torch.Generator) -> float:
    """L/N for this step: Gaussian(mean, std) clipped to [min, max]."""
    r = cfg.ratio_mean + cfg.ratio_std * float(torch.randn((), generator=gen))
    return min(max(r, cfg.ratio_min), cfg.ratio_max)


def gumbel_top_k(weights: torch.Tensor, k: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Draw k[b] items of row b without replacement with probability ∝ weights (Gumbel top-K).

    weights (B, L) >= 0 (0 = never drawn); k (B,). Returns a (B, L) bool mask with exactly
    min(k[b], #positive weights) True entries per row. The noise is drawn on ``gen``'s device.
    """
    u = torch.rand(weights.shape, generator=gen, device=gen.device).to(weights.device).clamp_(1e-20, 1.0)
    keys = weights.log() - (-u.log()).log()  # log w + Gumbel(0, 1); -inf where w = 0
    order = keys.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    return (rank < k[:, None]) & (weights > 0)


def amtm_weights(latent_assign: torch.Tensor, latent_counts: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """AMTM sampling weights (B, L): local token j in latent group i gets 1/g_i², g = group size."""
    g = latent_counts.gather(1, latent_assign)  # (B, L): size of each local token's group
    return torch.where(token_mask, 1.0 / g.clamp_min(1.0) ** 2, torch.zeros_like(g))


def base_span_mask(token_weights: torch.Tensor, local: LocalEncoderOutput, k: torch.Tensor, smooth: int,
                   gen: torch.Generator) -> torch.Tensor:
    """Masked bases (B, N) drawn in base coordinates from token weights, with content-blind edges.

    Each token's weight is spread over its bases (w_t / size_t per base, so a token keeps its total
    mass), smoothed by a centred box of ``smooth`` + 1 bases (so a span start cannot find the token
    boundary it sits next to), and ``k`` span starts are drawn without replacement by Gumbel top-k.
    Every span is the mean token length long (N_real / L, rounded), so the masked region covers about
    the bases of k tokens; where spans overlap, fewer. Neither edge of a span depends on where the
    tokenizer put its boundaries, which is the point (docs/method.md, "AMTM")."""
    base_mask = local.base_mask
    B, N = base_mask.shape
    size = local.tokens.size.gather(1, local.assign).clamp_min(1.0)  # (B, N): length of each base's token
    w = torch.where(base_mask, token_weights.gather(1, local.assign) / size, torch.zeros_like(size))
    if smooth > 0:
        w = F.avg_pool1d(w[:, None], smooth + 1, stride=1, padding=smooth // 2, count_include_pad=False)[:, 0, :N]
        w = torch.where(base_mask, w, torch.zeros_like(w))
    span = torch.round(base_mask.sum(1) / local.tokens.lengths.clamp_min(1)).long().clamp_min(1)  # (B,)
    starts = gumbel_top_k(w, k, gen).float()  # (B, N)
    # base j is masked if a start lies in (j - span, j]: a running sum of the starts over the span
    cum = F.pad(starts.cumsum(1), (1, 0))  # (B, N + 1)
    j = torch.arange(N, device=base_mask.device)
    lo = (j[None, :] + 1 - span[:, None]).clamp_min(0)
    covered = cum[:, 1:] - cum.gather(1, lo)
    return (covered > 0) & base_mask


def masked_edges(masked: torch.Tensor, base_mask: torch.Tensor) -> torch.Tensor:
    """Masked bases (B, N) with a visible real neighbour on either side: where a span edge could leak."""
    visible = base_mask & ~masked
    left = F.pad(visible[:, :-1], (1, 0), value=False)
    right = F.pad(visible[:, 1:], (0, 1), value=False)
    return masked & (left | right)


def detach_local(local: LocalEncoderOutput) -> LocalEncoderOutput:
    t = local.tokens
    return replace(local, tokens=replace(t, z=t.z.detach()))


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    where = where & (labels < NUM_BASES)
    hits = ((logits.argmax(-1) == labels) & where).sum()
    return hits.float() / where.sum().clamp_min(1)


class MergeDNAPretrainer(nn.Module):
    """Runs the configured passes on a batch and returns the total loss and its parts."""

    def __init__(self, model: MergeDNAForPretraining, objective: ObjectiveConfig):
        super().__init__()
        self.model, self.objective = model, objective.resolved(model.config.merge_ratio)

    def forward(self, input_ids: torch.Tensor, gen: torch.Generator, ratio: float | None = None,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """input_ids (B, N). ``ratio`` fixes L/N (validation); otherwise it is drawn from ``gen``.
        Returns {"loss", and per part: "mtr", "latent_mtr", "amtm" / "mlm", "*_acc"} as 0-d tensors."""
        dgen = device_generator(gen, input_ids.device)
        if self.objective.objective == "mlm":
            return self._mlm(input_ids, dgen, attention_mask)
        cfg, model = self.objective, self.model
        ratio = sample_ratio(cfg, gen) if ratio is None else ratio
        out: dict[str, torch.Tensor] = {"ratio": torch.tensor(ratio)}

        # pass 1: MTR through every parameter
        enc = model.mergedna(input_ids, attention_mask, merge_ratio=ratio)
        logits = model.decode(enc.last_hidden_state, enc.local)
        out["mtr"] = base_cross_entropy(logits, input_ids)
        out["mtr_acc"] = masked_accuracy(logits.detach(), input_ids, enc.base_mask)
        total = out["mtr"]

        # pass 2: latent MTR on the detached tokenization (φ gets no gradient from this term)
        need_groups = cfg.masking == "amtm"
        if cfg.lambda_latent > 0 or need_groups:
            local = detach_local(enc.local)
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.lambda_latent > 0):
                latent = model.mergedna.latent_encoder(local.tokens, merge_ratio=model.config.latent_merge_ratio)
                if cfg.lambda_latent > 0:
                    logits2 = model.decode(latent.tokens.z, local, latent.assign)
                    out["latent_mtr"] = base_cross_entropy(logits2, input_ids)
                    total = total + cfg.lambda_latent * out["latent_mtr"]

        # pass 3: adaptive masked token modelling
        if cfg.masking != "none":
            tmask = enc.local.tokens.mask
            if need_groups:
                weights = amtm_weights(latent.assign, latent.tokens.count, tmask)
                k = latent.tokens.lengths  # K draws, K = number of latent groups
            else:
                weights = tmask.float()
                k = torch.round(tmask.sum(1) * model.config.latent_merge_ratio).long()
            masked = self._choose_masked(weights, enc.local, k, dgen)
            out.update(self._masked_pass(input_ids, enc.local, masked, ratio, "amtm"))
            total = total + out["amtm"]
        out["loss"] = total
        return out

    def _choose_masked(self, token_weights, local: LocalEncoderOutput, k, gen) -> torch.Tensor:
        """Masked bases (B, N): spans in base coordinates (default) or the drawn tokens' own spans."""
        if self.objective.mask_spans == "bases":
            return base_span_mask(token_weights, local, k, self.model.config.window_size, gen)
        chosen = gumbel_top_k(token_weights, k, gen)  # (B, L) local tokens
        return chosen.gather(1, local.assign) & local.base_mask

    def _masked_pass(self, input_ids, local: LocalEncoderOutput, masked, ratio, name) -> dict[str, torch.Tensor]:
        """Replace the masked bases (B, N) by MASK, run the full model, score the masked non-N bases.
        With ``pass3_budget="visible"`` the masked and the visible bases are tokenized apart, each at the
        ratio, so visible DNA keeps pass 1's compression however much is masked."""
        if self.objective.pass3_budget == "visible" and ratio is not None:
            logits, enc = self.model.masked_logits(input_ids, masked, local.base_mask, ratio, local.lengths_cpu)
        else:  # one budget for the whole masked window (the paper's wording; or no merging at all)
            model = self.model.mergedna
            enc = model.local_encoder(input_ids.masked_fill(masked, MASK), local.base_mask, ratio,
                                      lengths_cpu=local.lengths_cpu)
            logits = self.model.decode(model.latent_encoder(enc.tokens).tokens.z, enc)
        labels = input_ids.masked_fill(~masked, -100)
        edge = masked_edges(masked, local.base_mask)
        out = {name: base_cross_entropy(logits, labels),
               f"{name}_acc": masked_accuracy(logits.detach(), input_ids, masked),
               f"{name}_masked_frac": masked.sum() / local.base_mask.sum()}
        with torch.no_grad():  # the loss on span edges vs inside spans: a shortcut shows as a gap here
            out[f"{name}_edge"] = base_cross_entropy(logits.detach(), labels.masked_fill(~edge, -100))
            out[f"{name}_interior"] = base_cross_entropy(logits.detach(), labels.masked_fill(edge, -100))
            # compression of the visible DNA in this pass, tokens per visible base: pass 1 ran at ``ratio``
            visible = local.base_mask & ~masked
            out[f"{name}_visible_ratio"] = (unique_per_row(enc.assign, visible).sum()
                                            / visible.sum().clamp_min(1))
        return out

    def _mlm(self, input_ids, gen, attention_mask) -> dict[str, torch.Tensor]:
        """Plain masked modelling (the no-merging ablation): mask a fraction of tokens uniformly."""
        model = self.model
        base_mask, lengths = check_inputs(input_ids, attention_mask)
        with torch.no_grad():  # only the token spans are needed here
            local = model.mergedna.local_encoder(input_ids, base_mask, lengths_cpu=lengths)
        tmask = local.tokens.mask
        k = torch.round(tmask.sum(1) * self.objective.mlm_mask_ratio).long().clamp_min(1)
        masked = gumbel_top_k(tmask.float(), k, gen).gather(1, local.assign) & base_mask
        out = self._masked_pass(input_ids, local, masked, None, "mlm")
        out["loss"] = out["mlm"]
        return out


def unique_per_row(assign: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Number of distinct tokens (B,) that the bases marked by ``where`` (B, N) fall in."""
    hit = torch.zeros(assign.shape, dtype=torch.long, device=assign.device)
    return hit.scatter_reduce(1, assign, where.long(), "amax").sum(1)  # a token is hit if any of its bases is


class MaskedModellingLoss(torch.nn.Module):
    """An auxiliary masked-modelling loss on the task's own training sequences (``mlm_weight``): MergeDNA's
    decoders (ω, ζ, base head) on the classifier's encoder, shared, scoring masked bases as pretraining's
    plain ``mlm`` objective does (:class:`~mergedna.objectives.MergeDNAPretrainer`). It gives the encoder a
    signal from the first step, while a from-scratch classifier still sits at the class prior
    (results/finetune_small_scratch). The decoders come from ``checkpoint`` when it has them."""

    def __init__(self, classifier: MergeDNAForSequenceClassification, seed: int, checkpoint=None):
        super().__init__()
        decoder = MergeDNAForPretraining(classifier.config, encoder=classifier.mergedna)  # shared: the one fine-tuned
        if checkpoint is not None:
            decoder.load_decoders(checkpoint)  # the checkpoint's ω, ζ and head where it has them; its encoder is not read
        self.pretrainer = MergeDNAPretrainer(decoder, ObjectiveConfig(objective="mlm"))
        self.seed = seed

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, step: int) -> torch.Tensor:
        return self.pretrainer(input_ids, step_generator(self.seed, step), attention_mask=attention_mask)["loss"]
