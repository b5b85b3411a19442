"""Token merging and un-merging as pure functions (docs/method.md, "Local Encoder" and "Latent merge").

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

The choice of pairs is discrete, yet the losses must shape it. With ``temperature`` set
(training), the adjacent planner attaches a *relaxed merge degree* to every candidate A token:
m = sigmoid((score − θ)/T), θ halfway between the weakest chosen and the strongest unchosen
score of its selection group. The forward pass stays exactly the hard merge (straight-through:
value 0 or 1, gradient of m), and :func:`apply_merge` evaluates the first-order effect of m on
both outcomes: a chosen A token's weight in its merged token, and for an unchosen candidate,
how its neighbour's merged token and its own vector would move had it merged
(z_a ← z_a + m·(t_b − z_a), t_b ← t_b + m-weighted z_a). So every candidate pair, merged or
not, learns "should these two merge" (docs/method.md explains the choice against DTEM's).

``assign`` is composed through each plan with one gather (:func:`compose_assign`), and
un-merging is a gather too (:func:`unmerge`). The dense source matrix S is never built
in the forward pass; :func:`source_matrix` exists only for inspection. Every function is
O(n) in time and memory except the global planner's (n/2)×(n/2) score matrix.

Host synchronisation: the padded width after a merge (``n_new``) is a Python int. When the
caller passes the lengths as a CPU tensor (``lengths_cpu``) it is computed on the host with no
device read; otherwise (and whenever pairs are restricted by ``segment``) it is read once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
    segment: torch.Tensor | None = None  # (B, n) long: tokens merge only within a segment (pass 3: masked/visible)
    lengths_cpu: torch.Tensor | None = None  # (B,) long on the CPU: real tokens per row, when known on the host

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    @property
    def padded(self) -> bool | None:
        """Whether any row is shorter than the width; None when only the device knows."""
        if self.lengths_cpu is None:
            return None
        return bool((self.lengths_cpu < self.mask.shape[1]).any())


@dataclass
class MergePlan:
    """Where each old token goes. ``index`` (B, n_old) in [0, n_new]; ``n_new`` marks a dropped padding slot."""

    index: torch.Tensor  # (B, n_old) long
    n_new: int
    lengths: torch.Tensor  # (B,) real tokens after the merge
    weight: torch.Tensor  # (B, n_old) float: 1 forward; on merged A tokens carries the relaxed degree's gradient
    soft: torch.Tensor | None = None  # (B, n_old) float, 0 forward: unchosen candidates' relaxed degree (gradient only)
    soft_dest: torch.Tensor | None = None  # (B, n_old) long: new index of the token an unchosen candidate would join
    lengths_cpu: torch.Tensor | None = None  # (B,) long on the CPU, when computed on the host


def merge_budget(lengths: torch.Tensor, target: torch.Tensor, steps_left: int) -> torch.Tensor:
    """Merges for this step (B,): the remaining ``lengths - target`` spread evenly over ``steps_left``
    steps (earlier steps take the remainder), and never more than halving the sequence."""
    remaining = (lengths - target).clamp_min(0)
    r = torch.div(remaining + steps_left - 1, steps_left, rounding_mode="floor")
    return torch.minimum(r, torch.div(lengths, 2, rounding_mode="floor"))


def target_lengths(lengths: torch.Tensor, ratio, steps: int) -> torch.Tensor:
    """Token budget L per sequence (B,): ``round(ratio * length)``, kept within what ``steps``
    halving steps can reach and at least one token (zero for an empty row). ``ratio`` is a float or a (B,) tensor."""
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=lengths.device)
    target = torch.round(ratio * lengths.float()).long()
    floor = torch.div(lengths + 2**steps - 1, 2**steps, rounding_mode="floor").clamp_min(1)
    return torch.minimum(torch.maximum(target, floor), lengths)


def _group_top_r(score: torch.Tensor, candidate: torch.Tensor, group: torch.Tensor, quota: torch.Tensor
                 ) -> torch.Tensor:
    """Top-``quota[g]`` candidates of each selection group, in one sort.

    score, candidate, group (B, m); quota (B, G). Scores are cosines in [-1, 1]: offsetting each group
    by 4·(G−1−g) sorts group 0 first, then group 1, ..., so a token's rank inside its group is its global
    rank minus the size of the groups before it. Ties break by position (stable sort)."""
    B, m = score.shape
    G = quota.shape[1]
    key = torch.where(candidate, score, torch.full_like(score, -2.0)) + 4.0 * (G - 1 - group).to(score.dtype)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=score.device).expand(B, m).contiguous())
    sizes = torch.zeros(B, G, dtype=torch.long, device=score.device).scatter_add_(1, group, torch.ones_like(group))
    before = sizes.cumsum(1) - sizes  # (B, G): tokens in the groups sorted ahead
    return (rank - before.gather(1, group) < quota.gather(1, group)) & candidate


def _window_quota(cap: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Share each sequence's r (B, S) out over windows (B, nw, S) in proportion to their candidate counts
    ``cap``, exactly (the quotas sum to r; a window never gets more than it has)."""
    total = cap.sum(1, keepdim=True).clamp_min(1)
    cum = torch.div(r[:, None, :] * cap.cumsum(1), total, rounding_mode="floor")  # floor(r * C_<=w / C)
    return torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1]))


def _relaxed_degree(score, candidate, chosen, group, G: int, temperature: float) -> torch.Tensor:
    """m = sigmoid((score − θ_g)/T) per A token (B, m); θ_g (detached) lies halfway between the weakest
    chosen and the strongest unchosen candidate of its selection group g."""
    B = score.shape[0]
    s = score.detach()
    inf = torch.full((B, G), float("inf"), device=s.device)
    lo = inf.scatter_reduce(1, group, torch.where(chosen, s, float("inf")), "amin")
    hi = (-inf).scatter_reduce(1, group, torch.where(candidate & ~chosen, s, float("-inf")), "amax")
    theta = torch.where(torch.isfinite(lo) & torch.isfinite(hi), (lo + hi) / 2,
                        torch.where(torch.isfinite(lo), lo - temperature,
                                    torch.where(torch.isfinite(hi), hi + temperature, torch.zeros_like(lo))))
    m = torch.sigmoid((score - theta.gather(1, group)) / temperature)
    return torch.where(candidate, m, torch.zeros_like(m))


def _survivors(merge: torch.Tensor, dest: torch.Tensor, mask: torch.Tensor, lengths_cpu: torch.Tensor | None,
               r_cpu: torch.Tensor | None):
    """The old -> new index map of a merge step from per-token choices (both planners).

    merge (B, n) bool: the token joins ``dest`` (B, n) (its own index otherwise). Returns ``new_idx``
    (B, n, each survivor's new index), ``index`` (B, n, each token's new index; surplus padding goes to
    the dropped slot ``n_new``), ``n_new``, the new lengths (B,) and, when the caller knows that every
    budgeted merge happens (``lengths_cpu`` and ``r_cpu`` given), the new lengths on the host, so that
    ``n_new`` needs no device read."""
    keep = ~merge  # survivors: every destination, every unmerged token, all padding
    new_idx = keep.long().cumsum(1) - 1
    lengths = (mask & keep).sum(1)
    lengths_new_cpu = None
    if lengths_cpu is not None and r_cpu is not None:
        lengths_new_cpu = lengths_cpu - torch.minimum(r_cpu.view(-1), torch.div(lengths_cpu, 2, rounding_mode="floor"))
        n_new = int(lengths_new_cpu.max()) if len(lengths_cpu) else 0
    else:
        n_new = int(lengths.max()) if lengths.numel() else 0  # one device read
    index = new_idx.gather(1, dest).clamp_max(n_new)
    return new_idx, index, n_new, lengths, lengths_new_cpu


def adjacent_merge_plan(metric: torch.Tensor, mask: torch.Tensor, r: torch.Tensor,
                        scope: str = "sequence", window: int = 16, *, segment: torch.Tensor | None = None,
                        temperature: float | None = None, lengths_cpu: torch.Tensor | None = None,
                        r_cpu: torch.Tensor | None = None) -> MergePlan:
    """Plan the Local Encoder's merge step.

    metric (B, n, d): L2-normalised grouping embeddings; mask (B, n).
    r: merges per sequence, (B,), or (B, S) per segment when ``segment`` (B, n) long in [0, S) is given:
    then only neighbours of the same segment may merge and each segment spends its own budget (capped
    at its candidates). ``scope="sequence"``: the r best A tokens of the sequence (or segment) merge;
    ``scope="window"``: r is shared out over windows of ``window`` tokens in proportion to their
    candidates and each window merges its best; neighbours are then restricted to the same window.
    ``temperature``: attach the relaxed merge degrees (training). ``lengths_cpu``/``r_cpu``: the
    lengths and budgets known on the host, so that ``n_new`` needs no device read (unsegmented only).
    """
    B, n, _ = metric.shape
    S = 1 if segment is None else r.shape[1]
    r = r.view(B, S)
    n_pad = n + (n % 2)
    if n % 2:  # give every A token a (padding) right neighbour slot
        metric, mask = F.pad(metric, (0, 0, 0, 1)), F.pad(mask, (0, 1))
        segment = None if segment is None else F.pad(segment, (0, 1))
    a, b = metric[:, 0::2], metric[:, 1::2]  # (B, n/2, d): A = even, B = odd positions
    ma, mb = mask[:, 0::2], mask[:, 1::2]
    ok_right, ok_left = ma & mb, ma[:, 1:] & mb[:, :-1]
    if segment is not None:  # pairs across segments never merge
        sa, sb = segment[:, 0::2], segment[:, 1::2]
        ok_right, ok_left = ok_right & (sa == sb), ok_left & (sa[:, 1:] == sb[:, :-1])
    neg = torch.tensor(float("-inf"), device=metric.device)
    right = torch.where(ok_right, (a * b).sum(-1), neg)  # A_i with B_i (position 2i+1)
    left = torch.where(ok_left, (a[:, 1:] * b[:, :-1]).sum(-1), neg)  # A_i with B_{i-1}
    left = F.pad(left, (1, 0), value=float("-inf"))  # A_0 has no left neighbour
    nA = a.shape[1]
    if scope == "window":
        first_in_window = (torch.arange(nA, device=metric.device) * 2) % window == 0
        left = left.masked_fill(first_in_window, float("-inf"))
    elif scope != "sequence":
        raise ValueError(f"unknown merge scope {scope!r}")
    go_left = left > right
    score = torch.where(go_left, left, right)  # (B, nA)
    candidate = torch.isfinite(score)
    seg_a = torch.zeros(B, nA, dtype=torch.long, device=metric.device) if segment is None else segment[:, 0::2]
    cand_per_seg = torch.zeros(B, S, dtype=torch.long, device=metric.device).scatter_add_(1, seg_a, candidate.long())
    r = torch.minimum(r, cand_per_seg)  # a segment cannot merge more pairs than it has
    if scope == "sequence":
        group, G, quota = seg_a, S, r
    else:  # one selection group per (window, segment)
        per_window = window // 2
        nw = -(-nA // per_window)
        win = torch.arange(nA, device=metric.device) // per_window
        group, G = win * S + seg_a, nw * S
        cap = torch.zeros(B, G, dtype=torch.long, device=metric.device).scatter_add_(1, group, candidate.long())
        quota = _window_quota(cap.view(B, nw, S), r).reshape(B, G)
    chosen = _group_top_r(score, candidate, group, quota)  # (B, nA)
    ia = torch.arange(nA, device=metric.device) * 2  # old index of each A token
    dest_a = torch.where(go_left, ia - 1, ia + 1)
    # scatter the A-token choices back onto the full row (B tokens never merge)
    merge = torch.zeros(B, n_pad, dtype=torch.bool, device=mask.device)
    merge[:, 0::2] = chosen
    dest = torch.arange(n_pad, device=mask.device).expand(B, -1).clone()
    dest[:, 0::2] = torch.where(chosen, dest_a, ia)
    # unsegmented, every sequence can spend its whole budget (r <= len // 2 <= its candidates)
    new_idx, index, n_new, lengths, lengths_new_cpu = _survivors(
        merge, dest, mask, lengths_cpu if segment is None else None, r_cpu)
    weight = torch.ones(B, n_pad, dtype=torch.float32, device=mask.device)
    soft = soft_dest = None
    if temperature is not None and score.requires_grad:
        m = _relaxed_degree(score, candidate, chosen, group, G, temperature)
        delta = m - m.detach()  # 0 forward, dm backward
        weight[:, 0::2] = torch.where(chosen, 1.0 + delta, weight[:, 0::2])
        soft = torch.zeros(B, n_pad, dtype=torch.float32, device=mask.device)
        soft[:, 0::2] = torch.where(chosen, torch.zeros_like(delta), delta)
        soft_dest = torch.zeros(B, n_pad, dtype=torch.long, device=mask.device)
        soft_dest[:, 0::2] = new_idx.gather(1, dest_a.clamp(0, n_pad - 1).expand(B, -1)).clamp_max(n_new)
        soft, soft_dest = soft[:, :n], soft_dest[:, :n]
    return MergePlan(index=index[:, :n], n_new=n_new, lengths=lengths, weight=weight[:, :n], soft=soft,
                     soft_dest=soft_dest, lengths_cpu=lengths_new_cpu)


def bipartite_merge_plan(metric: torch.Tensor, mask: torch.Tensor, r: torch.Tensor,
                         lengths_cpu: torch.Tensor | None = None, r_cpu: torch.Tensor | None = None) -> MergePlan:
    """ToMe bipartite soft matching over all tokens (the Latent Encoder's global merge).

    metric (B, n, d) L2-normalised; A = even, B = odd positions; each A picks its most similar
    B anywhere in the sequence; the r best A tokens merge. Builds an (n/2)×(n/2) score matrix, in
    fp32 even under bf16 autocast: the cosines of near-identical latent tokens differ in the 3rd
    decimal, and bf16 rounding would make the grouping depend on the rest of the batch.
    Merged tokens need not be adjacent, so the result is a grouping, not a set of spans.
    """
    B, n, _ = metric.shape
    a, b = metric[:, 0::2].float(), metric[:, 1::2].float()
    ma, mb = mask[:, 0::2], mask[:, 1::2]
    kind = metric.device.type
    no_autocast = (torch.autocast(device_type=kind, enabled=False) if torch.amp.is_autocast_available(kind)
                   else contextlib.nullcontext())
    with no_autocast:
        scores = a @ b.transpose(1, 2)  # (B, nA, nB), fp32
    scores = scores.masked_fill(~mb[:, None, :], float("-inf")).masked_fill(~ma[:, :, None], float("-inf"))
    best, best_b = scores.max(-1)  # (B, nA)
    candidate = torch.isfinite(best)
    chosen = _group_top_r(best, candidate, torch.zeros_like(best_b), r.view(B, 1))
    ia = torch.arange(a.shape[1], device=metric.device) * 2
    merge = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    merge[:, 0::2] = chosen
    dest = torch.arange(n, device=mask.device).expand(B, -1).clone()
    dest[:, 0::2] = torch.where(chosen, best_b * 2 + 1, ia)
    # every real A token (ceil(len/2) of them) has a real B to join once len >= 2, and r <= len // 2
    _, index, n_new, lengths, lengths_new_cpu = _survivors(merge, dest, mask, lengths_cpu, r_cpu)
    weight = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    return MergePlan(index=index, n_new=n_new, lengths=lengths, weight=weight, lengths_cpu=lengths_new_cpu)


def fixed_span_plan(mask: torch.Tensor, span: int, lengths_cpu: torch.Tensor | None = None) -> MergePlan:
    """Pool fixed spans of ``span`` tokens (the "no learned merging" ablation): token j -> j // span."""
    B, n = mask.shape
    lengths = torch.div(mask.sum(1) + span - 1, span, rounding_mode="floor")
    lengths_new_cpu = None if lengths_cpu is None else torch.div(lengths_cpu + span - 1, span, rounding_mode="floor")
    n_new = int((lengths if lengths_new_cpu is None else lengths_new_cpu).max()) if B else 0
    index = (torch.arange(n, device=mask.device) // span).clamp_max(n_new).expand(B, n)
    weight = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    return MergePlan(index=index, n_new=n_new, lengths=lengths, weight=weight, lengths_cpu=lengths_new_cpu)


def apply_merge(tokens: Tokens, plan: MergePlan) -> Tokens:
    """Merge by size-weighted mean: z ← Σ s·z / Σ s, s ← Σ s, pos likewise weighted, count ← Σ count.
    With relaxed degrees in the plan, adds their first-order effect (zero in value, see the module doc)."""
    B, n, D = tokens.z.shape
    slots = plan.n_new + 1  # the last slot swallows surplus padding and is dropped
    idx = plan.index
    size = tokens.size.float()
    w = size * plan.weight  # (B, n), zero on padding
    zf = tokens.z.float()
    num = zf.new_zeros(B, slots, D).scatter_add(1, idx[..., None].expand(B, n, D), zf * w[..., None])
    den = w.new_zeros(B, slots).scatter_add(1, idx, w)
    if plan.soft is not None:  # unchosen candidates join their neighbour's mean with weight m (0 forward)
        ws = size * plan.soft
        num = num.scatter_add(1, plan.soft_dest[..., None].expand(B, n, D), zf * ws[..., None])
        den = den.scatter_add(1, plan.soft_dest, ws)
    new_size = size.new_zeros(B, slots).scatter_add(1, idx, size)
    pos_sum = size.new_zeros(B, slots).scatter_add(1, idx, tokens.pos.float() * size)
    # slice before dividing: the result is a fresh contiguous (B, n_new, D), so compiled blocks see
    # one stride pattern whatever the merge (a strided view made torch.compile recompile per shape)
    z = num[:, :-1] / den[:, :-1, None].clamp_min(1e-6)  # (B, n_new, D)
    if plan.soft is not None:  # ... and their own token would have become the merged one: z_a + m·(t_b − z_a)
        own = idx.clamp_max(plan.n_new - 1)
        t_b = z.gather(1, plan.soft_dest.clamp_max(plan.n_new - 1)[..., None].expand(B, n, D))
        z_a = z.gather(1, own[..., None].expand(B, n, D))
        z = z.scatter_add(1, own[..., None].expand(B, n, D), plan.soft[..., None] * (t_b - z_a))
    z = z.to(tokens.z.dtype)
    new_size = new_size[:, :-1]
    pos = pos_sum[:, :-1] / new_size.clamp_min(1e-6)
    mask = torch.arange(plan.n_new, device=idx.device)[None, :] < plan.lengths[:, None]
    count = None
    if tokens.count is not None:
        count = w.new_zeros(B, slots).scatter_add(1, idx, tokens.count.float())[:, :-1]
    segment = None
    if tokens.segment is not None:  # merges stay inside a segment, so any member names it
        segment = tokens.segment.new_zeros(B, slots).scatter_reduce(1, idx, tokens.segment, "amax",
                                                                   include_self=False)[:, :-1]
    return Tokens(z=z, size=new_size, pos=pos, mask=mask, count=count, segment=segment,
                  lengths_cpu=plan.lengths_cpu)


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
