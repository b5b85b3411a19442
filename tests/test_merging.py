"""Properties of the merge planners and of the Local Encoder's tokenization."""

import pytest
import torch
import torch.nn.functional as F

from mergedna_testing import batch_from
from mergedna.config import preset
from mergedna.merging import (Tokens, adjacent_merge_plan, apply_merge, bipartite_merge_plan, compose_assign,
                              merge_budget, source_matrix, target_lengths, unmerge)
from mergedna.model import MergeDNAModel


def random_tokens(lengths, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, n = len(lengths), max(lengths)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    z = torch.randn(B, n, D, generator=g) * mask[..., None]
    pos = torch.arange(n).float().expand(B, n)
    return Tokens(z=z, size=mask.float(), pos=pos, mask=mask)


def check_partition(assign, base_mask, n_tokens):
    """assign on real bases: starts at 0, steps of 0 or 1, ends at n_tokens-1 (a contiguous partition)."""
    for b in range(assign.shape[0]):
        a = assign[b, base_mask[b]]
        assert a[0] == 0
        steps = a[1:] - a[:-1]
        assert ((steps == 0) | (steps == 1)).all(), "assign must be non-decreasing and contiguous"
        assert a[-1] == n_tokens[b] - 1


@pytest.mark.parametrize("scope", ["sequence", "window"])
def test_adjacent_merge_partitions_and_conserves(scope):
    lengths = [37, 64, 5, 1]
    t = random_tokens(lengths)
    assign = torch.arange(t.mask.shape[1]).expand_as(t.mask)
    r = torch.tensor([10, 32, 2, 0])
    metric = F.normalize(t.z + 0.01, dim=-1)
    plan = adjacent_merge_plan(metric, t.mask, r, scope=scope, window=16)
    new = apply_merge(t, plan)
    assign = compose_assign(assign, plan)
    assert new.lengths.tolist() == [27, 32, 3, 1]  # exactly r merges each
    check_partition(assign, t.mask, new.lengths)
    # sizes are counts of assign, sum to the real length, and padding tokens are empty
    for b, n in enumerate(lengths):
        counts = torch.bincount(assign[b, :n], minlength=new.z.shape[1]).float()
        assert torch.equal(counts[new.mask[b]], new.size[b, new.mask[b]])
        assert new.size[b].sum() == n
        assert (new.size[b, ~new.mask[b]] == 0).all()
        assert (new.size[b, new.mask[b]] <= 3).all()  # an A merges once; a B absorbs at most two neighbours
    # each merged token is the size-weighted mean of its bases' vectors (apply on sizes 1 = plain mean)
    S = source_matrix(assign, new.z.shape[1]).float() * t.mask[:, None, :]  # (B, n_new, N)
    expected = (S @ t.z) / S.sum(-1, keepdim=True).clamp_min(1)
    assert torch.allclose(new.z, expected, atol=1e-6)
    assert torch.allclose(new.pos * new.mask, ((S @ t.pos[..., None]).squeeze(-1) / S.sum(-1).clamp_min(1)))


def test_window_scope_keeps_merges_inside_windows():
    t = random_tokens([64, 64])
    plan = adjacent_merge_plan(F.normalize(t.z, dim=-1), t.mask, torch.tensor([16, 24]), scope="window", window=16)
    assign = compose_assign(torch.arange(64).expand(2, 64), plan)
    for b in range(2):
        for w in range(1, 4):  # first base of each window starts a new token
            assert assign[b, 16 * w] != assign[b, 16 * w - 1]
        # quotas spread evenly: every window merges r / 4
        per_window = [(torch.unique(assign[b, 16 * w:16 * w + 16]).numel()) for w in range(4)]
        assert per_window == [16 - [16, 24][b] // 4] * 4


def test_merge_prefers_most_similar_neighbours():
    # 8 tokens: the pair (2,3) is identical, all others orthogonal -> with r=1 exactly that pair merges
    z = torch.eye(8).unsqueeze(0).clone()
    z[0, 2] = z[0, 3]
    t = Tokens(z=z, size=torch.ones(1, 8), pos=torch.arange(8.).unsqueeze(0), mask=torch.ones(1, 8, dtype=torch.bool))
    plan = adjacent_merge_plan(F.normalize(z, dim=-1), t.mask, torch.tensor([1]))
    assign = compose_assign(torch.arange(8).unsqueeze(0), plan)
    assert assign[0].tolist() == [0, 1, 2, 2, 3, 4, 5, 6]


def test_budget_spreads_merges_evenly_and_never_more_than_halves():
    lengths = torch.tensor([4096, 1000, 3])
    target = target_lengths(lengths, 0.5, steps=4)
    assert target.tolist() == [2048, 500, 2]
    cur, rs = lengths.clone(), []
    for left in (4, 3, 2, 1):
        r = merge_budget(cur, target, left)
        assert (r <= cur // 2).all()
        rs.append(r)
        cur = cur - r
    assert torch.equal(cur, target)
    assert [int(r[0]) for r in rs] == [512, 512, 512, 512]
    # a target below what four halvings can reach is raised to that floor
    assert target_lengths(torch.tensor([64]), 0.01, steps=4).tolist() == [4]


def test_unmerge_gives_each_base_its_tokens_vector():
    t = random_tokens([20, 13])
    plan = adjacent_merge_plan(F.normalize(t.z, dim=-1), t.mask, torch.tensor([7, 5]))
    new = apply_merge(t, plan)
    assign = compose_assign(torch.arange(20).expand(2, 20), plan)
    back = unmerge(new.z, assign)
    for b in range(2):
        for j in range(int(t.mask[b].sum())):
            assert torch.equal(back[b, j], new.z[b, assign[b, j]])


def test_global_bipartite_merge_groups_similar_tokens_anywhere():
    # tokens 0 and 5 are identical (far apart): ToMe's global matching merges them first
    z = torch.eye(8).unsqueeze(0).clone()
    z[0, 0] = z[0, 5]
    mask = torch.ones(1, 8, dtype=torch.bool)
    t = Tokens(z=z, size=torch.ones(1, 8), pos=torch.arange(8.).unsqueeze(0), mask=mask, count=torch.ones(1, 8))
    plan = bipartite_merge_plan(F.normalize(z, dim=-1), mask, torch.tensor([1]))
    new = apply_merge(t, plan)
    a2 = compose_assign(torch.arange(8).unsqueeze(0), plan)
    assert a2[0, 0] == a2[0, 5] and torch.unique(a2).numel() == 7
    assert new.count.sum() == 8 and new.count.max() == 2
    assert new.pos[0, a2[0, 0]] == 2.5  # mean base coordinate of the group


def test_local_encoder_tokenizes_real_dna_into_contiguous_spans(chr20):
    torch.manual_seed(0)
    model = MergeDNAModel(preset("tiny")).eval()
    ids = batch_from(chr20, [512, 300, 77])
    with torch.no_grad():
        out = model(ids, merge_ratio=0.5)
    lengths = out.base_mask.sum(1)
    assert out.token_mask.sum(1).tolist() == [256, 150, 38]  # round(0.5 * length) (77*0.5=38.5 -> 38)
    check_partition(out.assign, out.base_mask, out.token_mask.sum(1))
    assert torch.equal(out.token_sizes.sum(1), lengths.float())
    assert (out.token_sizes[~out.token_mask] == 0).all()


def test_ratio_one_keeps_every_base(chr20):
    model = MergeDNAModel(preset("tiny")).eval()
    out = model(batch_from(chr20, [100]), merge_ratio=1.0)
    assert out.last_hidden_state.shape[1] == 100 and torch.equal(out.assign[0], torch.arange(100))


def test_merged_tokens_are_contiguous():
    """Blocks receive merged tokens; a strided view here made torch.compile recompile for every
    shape until it hit its limit and fell back to eager (found in the speed suite)."""
    g = torch.Generator().manual_seed(3)
    B, n, D = 2, 21, 8
    mask = torch.arange(n)[None] < torch.tensor([[21], [15]])
    tokens = Tokens(z=torch.randn(B, n, D, generator=g), size=mask.float(),
                    pos=torch.arange(n).float().expand(B, n), mask=mask)
    metric = F.normalize(torch.randn(B, n, 4, generator=g), dim=-1)
    merged = apply_merge(tokens, adjacent_merge_plan(metric, mask, torch.tensor([5, 3])))
    assert merged.z.is_contiguous() and merged.z.shape == (B, 16, D)  # 21 - 5 real tokens left
