"""Token merging and un-merging as pure functions (SPEC §4–6).

A batch of variable-length token sequences is a :class:`Tokens`: vectors ``z`` (B, n, D),
sizes (bases per token; 0 on padding), positions (mean base coordinate) and a mask.
Real tokens always form a prefix of each row, padding the rest.

A merge step is split, as in ToMe, into *planning* (which token goes where: a
:class:`MergePlan` holding the old→new index map) and *applying* (size-weighted means).
Two planners:

* :func:`adjacent_merge_plan` — the Local Encoder's: bipartite matching restricted to
  neighbours (A = even positions, B = odd positions; each A scores its left and right B
  neighbour and keeps the better one; the top-r A tokens merge into their B). Spans stay
  contiguous, so ``assign`` (base → token) stays non-decreasing.
* :func:`bipartite_merge_plan` — the Latent Encoder's global ToMe matching over all tokens.

``assign`` is composed through each plan with one gather (:func:`compose_assign`), and
un-merging is a gather too (:func:`unmerge`). The dense source matrix S is never built
in the forward pass; :func:`source_matrix` exists only for inspection. Every function is
O(n) in time and memory except the global planner's (n/2)×(n/2) score matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass
class Tokens:
    """A padded batch of token sequences. ``count`` (optional) is tokens-of-the-previous-stage per token."""

    z: torch.Tensor  # (B, n, D)
    size: torch.Tensor  # (B, n) float, bases per token, 0 on padding
    pos: torch.Tensor  # (B, n) float, mean base coordinate of the span
    mask: torch.Tensor  # (B, n) bool, real tokens (a prefix of each row)
    count: torch.Tensor | None = None  # (B, n) float, used for latent proportional attention

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)


@dataclass
class MergePlan:
    """Where each old token goes. ``index`` (B, n_old) in [0, n_new]; ``n_new`` marks a dropped padding slot."""

    index: torch.Tensor  # (B, n_old) long
    n_new: int
    lengths: torch.Tensor  # (B,) real tokens after the merge
    weight: torch.Tensor  # (B, n_old) float: 1 forward; carries the score gradient on merged tokens


def merge_budget(lengths: torch.Tensor, target: torch.Tensor, steps_left: int) -> torch.Tensor:
    """Merges for this step (B,): the remaining ``lengths - target`` spread evenly over ``steps_left``
    steps (earlier steps take the remainder), and never more than halving the sequence."""
    remaining = (lengths - target).clamp_min(0)
    r = torch.div(remaining + steps_left - 1, steps_left, rounding_mode="floor")
    return torch.minimum(r, torch.div(lengths, 2, rounding_mode="floor"))


def target_lengths(lengths: torch.Tensor, ratio, steps: int) -> torch.Tensor:
    """Token budget L per sequence (B,): ``round(ratio * length)``, kept within what ``steps``
    halving steps can reach and at least one token. ``ratio`` is a float or a (B,) tensor."""
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=lengths.device)
    target = torch.round(ratio * lengths.float()).long()
    floor = torch.div(lengths + 2**steps - 1, 2**steps, rounding_mode="floor").clamp_min(1)
    return torch.maximum(torch.minimum(target, lengths), floor)


def _plan_from_choice(merge: torch.Tensor, dest: torch.Tensor, mask: torch.Tensor,
                      score: torch.Tensor | None) -> MergePlan:
    """Build the plan from per-token choices.

    merge (B, n) bool: this token merges into ``dest`` (B, n) long (its own index otherwise);
    destinations never merge themselves. score (B, n) or None: similarity of the chosen pair,
    carried as a straight-through weight (value 1, gradient of the score) on merged tokens.
    """
    keep = ~merge  # survivors: every destination, every unmerged token, all padding
    new_idx = keep.long().cumsum(1) - 1  # (B, n): index of each survivor in the new row
    lengths = (mask & keep).sum(1)
    n_new = int(lengths.max())
    index = new_idx.gather(1, dest).clamp_max(n_new)  # surplus padding -> the dropped slot n_new
    weight = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    if score is not None:
        st = 1.0 + (score - score.detach())  # straight-through: exactly 1 forward, d(score) backward
        weight = torch.where(merge, st, weight)
    return MergePlan(index=index, n_new=n_new, lengths=lengths, weight=weight)


def adjacent_merge_plan(metric: torch.Tensor, mask: torch.Tensor, r: torch.Tensor,
                        scope: str = "sequence", window: int = 16) -> MergePlan:
    """Plan the Local Encoder's merge step.

    metric (B, n, d): L2-normalised grouping embeddings; mask (B, n); r (B,) merges per sequence.
    ``scope="sequence"``: the r best A tokens of the whole sequence merge (regions compress unevenly).
    ``scope="window"``: r is shared out over windows of ``window`` tokens in proportion to their
    candidates and each window merges its best; neighbours are then restricted to the same window.
    """
    B, n, _ = metric.shape
    if n % 2:  # give every A token a (padding) right neighbour slot
        metric, mask = F.pad(metric, (0, 0, 0, 1)), F.pad(mask, (0, 1))
    a, b = metric[:, 0::2], metric[:, 1::2]  # (B, n/2, d): A = even, B = odd positions
    ma, mb = mask[:, 0::2], mask[:, 1::2]
    neg = torch.tensor(float("-inf"), device=metric.device)
    right = torch.where(ma & mb, (a * b).sum(-1), neg)  # A_i with B_i (position 2i+1)
    left = torch.where(ma[:, 1:] & mb[:, :-1], (a[:, 1:] * b[:, :-1]).sum(-1), neg)  # A_i with B_{i-1}
    left = F.pad(left, (1, 0), value=float("-inf"))  # A_0 has no left neighbour
    if scope == "window":
        first_in_window = (torch.arange(a.shape[1], device=metric.device) * 2) % window == 0
        left = left.masked_fill(first_in_window, float("-inf"))
    go_left = left > right
    score = torch.where(go_left, left, right)  # (B, n/2)
    candidate = torch.isfinite(score)
    # rank A tokens by score, highest first; ties broken by position for determinism
    if scope == "sequence":
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                                .expand_as(order).contiguous())
        chosen = (rank < r[:, None]) & candidate
    elif scope == "window":
        chosen = _window_choice(score, candidate, r, window // 2)
    else:
        raise ValueError(f"unknown merge scope {scope!r}")
    ia = torch.arange(a.shape[1], device=metric.device) * 2  # old index of each A token
    dest_a = torch.where(go_left, ia - 1, ia + 1)
    # scatter the A-token choices back onto the full row (B tokens never merge)
    merge = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    merge[:, 0::2] = chosen
    dest = torch.arange(mask.shape[1], device=mask.device).expand(B, -1).clone()
    dest[:, 0::2] = torch.where(chosen, dest_a, ia)
    full_score = torch.zeros(mask.shape, dtype=score.dtype, device=score.device)
    full_score[:, 0::2] = torch.where(chosen, score, 0.0)
    plan = _plan_from_choice(merge, dest, mask, full_score)
    if n != mask.shape[1]:  # drop the slot added for odd n
        plan = replace(plan, index=plan.index[:, :n], weight=plan.weight[:, :n])
    return plan


def _window_choice(score: torch.Tensor, candidate: torch.Tensor, r: torch.Tensor, per_window: int) -> torch.Tensor:
    """Top-r inside each window of ``per_window`` A tokens. Each sequence's r is shared out exactly,
    in proportion to the windows' candidate counts (a window never gets more than it has)."""
    B, na = score.shape
    nw = -(-na // per_window)
    pad = nw * per_window - na
    s = F.pad(score, (0, pad), value=float("-inf")).view(B, nw, per_window)
    cap = F.pad(candidate, (0, pad)).view(B, nw, per_window).sum(-1)  # (B, nw)
    total = cap.sum(1, keepdim=True).clamp_min(1)
    cum = torch.div(r[:, None] * cap.cumsum(1), total, rounding_mode="floor")  # floor(r * C_<=w / C)
    quota = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1]))  # (B, nw), sums to r
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    ar = torch.arange(per_window, device=score.device).expand_as(order).contiguous()
    rank = torch.empty_like(order).scatter_(-1, order, ar)
    chosen = (rank < quota[..., None]).view(B, nw * per_window)[:, :na]
    return chosen & candidate


def bipartite_merge_plan(metric: torch.Tensor, mask: torch.Tensor, r: torch.Tensor) -> MergePlan:
    """ToMe bipartite soft matching over all tokens (the Latent Encoder's global merge).

    metric (B, n, d) L2-normalised; A = even, B = odd positions; each A picks its most similar
    B anywhere in the sequence; the r best A tokens merge. Builds an (n/2)×(n/2) score matrix.
    Merged tokens need not be adjacent, so the result is a grouping, not a set of spans.
    """
    B, n, _ = metric.shape
    a, b = metric[:, 0::2], metric[:, 1::2]
    ma, mb = mask[:, 0::2], mask[:, 1::2]
    scores = a @ b.transpose(1, 2)  # (B, nA, nB)
    scores = scores.masked_fill(~mb[:, None, :], float("-inf")).masked_fill(~ma[:, :, None], float("-inf"))
    best, best_b = scores.max(-1)  # (B, nA)
    order = torch.sort(best, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    chosen = (rank < r[:, None]) & torch.isfinite(best)
    ia = torch.arange(a.shape[1], device=metric.device) * 2
    merge = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    merge[:, 0::2] = chosen
    dest = torch.arange(n, device=mask.device).expand(B, -1).clone()
    dest[:, 0::2] = torch.where(chosen, best_b * 2 + 1, ia)
    return _plan_from_choice(merge, dest, mask, None)


def fixed_span_plan(mask: torch.Tensor, span: int) -> MergePlan:
    """Pool fixed spans of ``span`` tokens (the "no learned merging" ablation): token j -> j // span."""
    B, n = mask.shape
    lengths = torch.div(mask.sum(1) + span - 1, span, rounding_mode="floor")
    n_new = int(lengths.max())
    index = (torch.arange(n, device=mask.device) // span).clamp_max(n_new).expand(B, n)
    weight = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    return MergePlan(index=index, n_new=n_new, lengths=lengths, weight=weight)


def apply_merge(tokens: Tokens, plan: MergePlan) -> Tokens:
    """Merge by size-weighted mean: z ← Σ s·z / Σ s, s ← Σ s, pos likewise weighted, count ← Σ count."""
    B, n, D = tokens.z.shape
    slots = plan.n_new + 1  # the last slot swallows surplus padding and is dropped
    idx = plan.index
    w = tokens.size.float() * plan.weight  # (B, n), zero on padding
    num = tokens.z.new_zeros(B, slots, D, dtype=torch.float32)
    num = num.scatter_add(1, idx[..., None].expand(B, n, D), tokens.z.float() * w[..., None])
    den = w.new_zeros(B, slots).scatter_add(1, idx, w)
    size = w.new_zeros(B, slots).scatter_add(1, idx, tokens.size.float())
    pos_sum = w.new_zeros(B, slots).scatter_add(1, idx, tokens.pos.float() * tokens.size.float())
    # slice before dividing: the result is a fresh contiguous (B, n_new, D), so compiled blocks see
    # one stride pattern whatever the merge (a strided view made torch.compile recompile per shape)
    z = (num[:, :-1] / den[:, :-1, None].clamp_min(1e-6)).to(tokens.z.dtype)
    size = size[:, :-1]
    pos = (pos_sum[:, :-1] / size.clamp_min(1e-6))
    mask = torch.arange(plan.n_new, device=idx.device)[None, :] < plan.lengths[:, None]
    count = None
    if tokens.count is not None:
        count = w.new_zeros(B, slots).scatter_add(1, idx, tokens.count.float())[:, :-1]
    return Tokens(z=z, size=size, pos=pos, mask=mask, count=count)


def compose_assign(assign: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """Follow ``assign`` (B, N) through one merge: base → old token → new token.
    Entries of padding bases are kept in range but carry no meaning."""
    return plan.index.gather(1, assign).clamp_max(max(plan.n_new - 1, 0))


def unmerge(z: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Each base (or local token) gets its token's vector: (B, n, D) gathered by assign (B, N) -> (B, N, D).
    This is the paper's Sᵀz without building S."""
    return z.gather(1, assign[..., None].expand(*assign.shape, z.shape[-1]))


def source_matrix(assign: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Dense S ∈ {0,1}^{B×n×N} with S[b, t, j] = 1 iff base j belongs to token t. For inspection only."""
    return F.one_hot(assign, n_tokens).transpose(1, 2)
