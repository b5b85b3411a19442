"""Sequence heads (mergedna.heads.SequencePooler) and the CLS token of MergeDNAModel, on real chr20 bases."""

import pytest
import torch

from mergedna.config import preset
from mergedna.heads import MergeDNAForSequenceClassification

from mergedna_testing import batch_from

POOLINGS = ("mean", "max", "cls", "attention", "flatten", "mean_flatten")
pytestmark = pytest.mark.usefixtures("one_thread")


def classifier(pooling, **kw):
    torch.manual_seed(0)
    cfg = preset("tiny", num_labels=3, pooling=pooling, cls_token=pooling == "cls", pool_length=100, **kw)
    return MergeDNAForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_head_shapes_gradients_and_padding_invariance(pooling, chr20):
    model = classifier(pooling)
    ids = batch_from(chr20, [80, 60])
    out = model(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.pooled.shape == (2, 64) and torch.isfinite(out.loss)
    model.train()
    model(ids, labels=torch.tensor([0, 2])).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        alone = model(ids[1:, :60]).logits
        batched = model(ids).logits[1:]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-4)


def test_cls_token_never_merges_and_leaves_token_outputs_in_shape(chr20):
    ids = batch_from(chr20, [64, 50])
    with_cls, without = classifier("cls").mergedna, classifier("mean").mergedna
    without.load_state_dict({k: v for k, v in with_cls.state_dict().items() if k != "cls"})
    with torch.no_grad():
        enc, plain = with_cls(ids), without(ids)
    assert enc.last_hidden_state.shape == plain.last_hidden_state.shape and enc.cls_state.shape == (2, 64)
    assert torch.equal(enc.assign, plain.assign) and plain.cls_state is None  # the tokenizer is untouched
    assert not torch.allclose(enc.last_hidden_state, plain.last_hidden_state)  # tokens attend to the CLS
    with pytest.raises(ValueError, match="latent global merge"):
        with_cls(ids, latent_merge_ratio=0.5)
    with pytest.raises(ValueError, match="cls_token"):
        preset("tiny", pooling="cls")


@pytest.mark.parametrize("pooling", ("attention", "flatten", "mean", "max", "mean_flatten"))
def test_position_aware_heads_see_where_a_feature_sits(pooling):
    """The same token vectors moved to other bases: the mean and max heads give the same vector (they
    cannot know where anything was), the position-aware heads do not."""
    from mergedna.model import MergeDNAEncoderOutput

    pooler = classifier(pooling).pooler
    torch.manual_seed(1)
    n = 64
    z = torch.randn(1, n, 64)
    ones, arange = torch.ones(1, n, dtype=torch.bool), torch.arange(n)[None]

    def pooled(feats):
        enc = MergeDNAEncoderOutput(last_hidden_state=feats, token_mask=ones, token_sizes=ones.float(),
                                    assign=arange, base_mask=ones, local=None)
        with torch.no_grad():
            return pooler(enc)

    same = torch.allclose(pooled(z), pooled(torch.roll(z, 16, dims=1)), atol=1e-5)
    assert same == (pooling in ("mean", "max"))


def test_max_head_keeps_one_spike_that_the_mean_dilutes_and_ignores_padding():
    """One token carrying a feature (a motif somewhere in 100 bases) shows at full height in ``max`` and
    at 1/100 of it in ``mean``; padded tokens, however large, are never the max."""
    from mergedna.model import MergeDNAEncoderOutput

    n = 100
    z = torch.full((2, n, 64), -1.0)
    z[0, 37, 5] = 4.0  # sequence 0: the motif at base 37
    z[1, 90:] = 100.0  # sequence 1: padding from base 90, with values that would win a plain max
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 90:] = False
    enc = MergeDNAEncoderOutput(last_hidden_state=z, token_mask=mask, token_sizes=mask.float(),
                                assign=torch.arange(n)[None].expand(2, n), base_mask=mask, local=None)
    peak, mean = classifier("max").pooler(enc), classifier("mean").pooler(enc)
    assert peak[0, 5] == 4.0 and mean[0, 5] == pytest.approx((4.0 - 99) / n)
    assert torch.equal(peak[1], torch.full((64,), -1.0))


def test_binned_flatten_lets_a_feature_move_inside_its_bin_but_not_across_and_ignores_padding(chr20):
    """``pool_bin`` 8: one token's feature moved from base 17 to 18 (both in bin 16-23) gives the same vector,
    moved to 25 (the next bin) a different one; without bins any move shows. 100 bases = 12 full bins and
    a ragged one of 4; padding (however large) never wins a bin's max, and the whole classifier is still
    unchanged by the padding of its batch."""
    from mergedna.heads import binned_max
    from mergedna.model import MergeDNAEncoderOutput

    binned, plain = classifier("flatten", pool_bin=8).pooler, classifier("flatten").pooler
    assert binned.out.in_features == 13 * 16 and plain.out.in_features == 100 * 16
    n, ones = 100, torch.ones(1, 100, dtype=torch.bool)
    base = torch.randn(1, 64) * 0.1

    def pooled(pooler, at):
        z = base.expand(n, 64).clone()[None]
        z[0, at] += 3.0
        enc = MergeDNAEncoderOutput(last_hidden_state=z, token_mask=ones, token_sizes=ones.float(),
                                    assign=torch.arange(n)[None], base_mask=ones, local=None)
        with torch.no_grad():
            return pooler(enc)

    torch.testing.assert_close(pooled(binned, 17), pooled(binned, 18))
    assert not torch.allclose(pooled(binned, 17), pooled(binned, 25), atol=1e-4)
    assert not torch.allclose(pooled(plain, 17), pooled(plain, 18), atol=1e-4)

    feats = torch.full((1, 10, 2), -1.0)
    feats[0, 7:] = 50.0  # padding from base 7
    mask = torch.arange(10)[None] < 7
    assert torch.equal(binned_max(feats, mask, 4), torch.tensor([[[-1.0, -1.0], [-1.0, -1.0], [0.0, 0.0]]]))

    model = classifier("mean_flatten", pool_bin=8)
    ids = batch_from(chr20, [80, 60])
    with torch.no_grad():
        torch.testing.assert_close(model(ids[1:, :60]).logits, model(ids).logits[1:], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="pool_bin"):
        preset("tiny", pool_bin=0)


def test_mean_flatten_is_the_sum_of_its_two_paths():
    """mean_flatten = the paper's mean over bases + the flatten head's vector, from the same weights."""
    from mergedna.model import MergeDNAEncoderOutput

    both, flat = classifier("mean_flatten").pooler, classifier("flatten").pooler
    flat.load_state_dict(both.state_dict())
    torch.manual_seed(2)
    z, ones = torch.randn(2, 40, 64), torch.ones(2, 40, dtype=torch.bool)
    sizes = torch.randint(1, 4, (2, 40)).float()
    assign = torch.repeat_interleave(torch.arange(40), 2)[None].expand(2, 80)
    enc = MergeDNAEncoderOutput(last_hidden_state=z, token_mask=ones, token_sizes=sizes, assign=assign,
                                base_mask=torch.ones(2, 80, dtype=torch.bool), local=None)
    mean = (z * sizes[..., None]).sum(1) / sizes.sum(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(both(enc), flat(enc) + mean)


def test_conv_stem_gives_each_base_its_ordered_neighbourhood_and_ignores_padding(chr20):
    """With ``conv_stem`` a base's starting vector depends on its neighbours and their order (the plain
    embedding: on the base alone); the classifier is still unchanged by the padding of its batch."""
    from mergedna.vocab import PAD

    model = classifier("max", conv_stem=5)
    local = model.mergedna.local_encoder
    ids = batch_from(chr20, [80, 60])
    mask = ids != PAD
    j = next(j for j in range(40, 70) if ids[0, j] != ids[0, j + 1])
    swapped = ids.clone()
    swapped[0, [j, j + 1]] = ids[0, [j + 1, j]]  # two different neighbours of base j + 2 change places
    with torch.no_grad():
        z, z_swapped, plain = local.embed_bases(ids, mask), local.embed_bases(swapped, mask), local.embed(ids)
        assert not torch.allclose(z[0, j + 2], z_swapped[0, j + 2])  # order of the neighbourhood matters
        assert torch.equal(local.embed(swapped)[0, j + 2], plain[0, j + 2])  # ... which the plain embedding cannot see
        alone, batched = model(ids[1:, :60]).logits, model(ids).logits[1:]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="conv_stem"):
        preset("tiny", conv_stem=4)


def test_pooling_settings_survive_save_and_load(tmp_path, chr20):
    model = classifier("flatten", pool_bin=4)
    model.save_pretrained(tmp_path / "m")
    again = MergeDNAForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert again.config.pooling == "flatten" and again.config.pool_length == 100 and again.config.pool_bin == 4
    ids = batch_from(chr20, [70])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)


def test_dropout_acts_in_training_only_and_holds_no_weights(chr20):
    """config.dropout > 0: two training-mode passes differ (each block's branches are dropped at random), an
    evaluation pass equals the same weights without dropout, and the state dict is the same as without it."""
    ids = batch_from(chr20, [80, 60])
    plain, dropped = classifier("mean", classifier_dropout=0.0), classifier("mean", dropout=0.3, classifier_dropout=0.0)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    assert torch.allclose(dropped(ids).logits, plain(ids).logits)
    plain.train(), dropped.train()
    assert torch.allclose(plain(ids).logits, plain(ids).logits)  # nothing else random in a training pass
    assert not torch.allclose(dropped(ids).logits, dropped(ids).logits)
    with pytest.raises(ValueError, match="dropout"):
        preset("tiny", dropout=1.0)
