"""Sequence heads (mergedna.heads.SequencePooler) and the CLS token of MergeDNAModel, on real chr20 bases."""

import pytest
import torch

from mergedna.config import preset
from mergedna.heads import MergeDNAForSequenceClassification

from mergedna_testing import batch_from

POOLINGS = ("mean", "cls", "attention", "flatten", "mean_flatten")
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


@pytest.mark.parametrize("pooling", ("attention", "flatten", "mean", "mean_flatten"))
def test_position_aware_heads_see_where_a_feature_sits(pooling):
    """The same token vectors moved to other bases: the mean head gives the same vector (it cannot
    know where anything was), the position-aware heads do not."""
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
    assert same == (pooling == "mean")


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


def test_pooling_settings_survive_save_and_load(tmp_path, chr20):
    model = classifier("flatten")
    model.save_pretrained(tmp_path / "m")
    again = MergeDNAForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert again.config.pooling == "flatten" and again.config.pool_length == 100
    ids = batch_from(chr20, [70])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)
