"""The three pretraining passes (docs/method.md §7) and their ablation switches."""

import pytest
import torch

from mergedna_testing import batch_from
from mergedna.config import preset
from mergedna.model import MergeDNAForPretraining
from mergedna.vocab import MASK
from mergedna.objectives import (MergeDNAPretrainer, ObjectiveConfig, amtm_weights, gumbel_top_k, sample_ratio,
                                 step_generator)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return MergeDNAForPretraining(preset("tiny"))


def test_all_parts_are_reported_and_finite(model, chr20):
    ids = batch_from(chr20, [256, 256, 180])
    out = MergeDNAPretrainer(model, ObjectiveConfig())(ids, step_generator(0, 0))
    for key in ("loss", "mtr", "latent_mtr", "amtm", "mtr_acc", "amtm_acc", "ratio"):
        assert key in out and torch.isfinite(out[key]), key
    assert torch.allclose(out["loss"], out["mtr"] + 0.25 * out["latent_mtr"] + out["amtm"])
    assert 0.4 <= float(out["ratio"]) <= 0.6


def test_latent_mtr_gives_the_local_encoder_no_gradient(model, chr20):
    ids = batch_from(chr20, [256, 200])
    out = MergeDNAPretrainer(model, ObjectiveConfig(masking="none"))(ids, step_generator(0, 1))
    out["latent_mtr"].backward()
    local = model.mergedna.local_encoder
    assert all(p.grad is None or not p.grad.any() for p in local.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mergedna.latent_encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.latent_decoder.parameters())


def test_mtr_and_amtm_train_the_local_encoder(model, chr20):
    ids = batch_from(chr20, [256, 200])
    out = MergeDNAPretrainer(model, ObjectiveConfig(lambda_latent=0.0))(ids, step_generator(0, 2))
    out["amtm"].backward()
    assert model.mergedna.local_encoder.group_proj[0].weight.grad.abs().sum() > 0


def test_gumbel_top_k_draws_exactly_k_without_replacement():
    w = torch.tensor([[1.0, 2.0, 0.0, 3.0, 1.0], [0.5, 0.5, 0.5, 0.0, 0.0]])
    for step in range(50):
        chosen = gumbel_top_k(w, torch.tensor([3, 2]), step_generator(1, step))
        assert chosen.sum(1).tolist() == [3, 2]
        assert not (chosen & (w == 0)).any()  # zero weight (padding) is never drawn


def test_amtm_favours_tokens_of_small_groups():
    # 8 local tokens: 0..3 form one latent group (g=4), 4..7 are singletons (g=1) -> weights 1/16 vs 1
    latent_assign = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]])
    counts = torch.tensor([[4.0, 1.0, 1.0, 1.0, 1.0]])
    w = amtm_weights(latent_assign, counts, torch.ones(1, 8, dtype=torch.bool))
    assert torch.allclose(w, torch.tensor([[1 / 16] * 4 + [1.0] * 4]))
    hits = torch.zeros(8)
    for step in range(400):
        hits += gumbel_top_k(w, torch.tensor([2]), step_generator(2, step))[0].float()
    assert hits[4:].sum() > 8 * hits[:4].sum()


def test_amtm_token_spans_mask_exactly_k_tokens_of_the_first_tokenization(model, chr20):
    ids = batch_from(chr20, [256, 256])
    obj = MergeDNAPretrainer(model, ObjectiveConfig(mask_spans="tokens"))
    seen = {}

    def spy(module, args, kwargs, output):
        seen.setdefault("calls", []).append(args[0] if args else kwargs["input_ids"])

    handle = model.mergedna.local_encoder.register_forward_hook(spy, with_kwargs=True)
    out = obj(ids, step_generator(0, 3), ratio=0.5)
    handle.remove()
    masked_ids = seen["calls"][1]  # pass 1 tokenizes the input, pass 3 the masked input
    # with ratio 0.5 each sequence has L = 128 tokens and K = 64 latent groups: 64 tokens are masked
    with torch.no_grad():
        enc = model.mergedna(ids, merge_ratio=0.5)
    for b in range(2):
        masked_tokens = torch.unique(enc.assign[b][masked_ids[b] == MASK])
        assert masked_tokens.numel() == 64
    assert 0 < float(out["amtm_masked_frac"]) < 1


def test_ratio_sampling_and_fixed_ratio_ablation():
    cfg = ObjectiveConfig().resolved(0.5)
    draws = torch.tensor([sample_ratio(cfg, step_generator(0, s)) for s in range(500)])
    assert draws.min() >= 0.4 and draws.max() <= 0.6 and abs(draws.mean() - 0.5) < 0.01
    assert 0.03 < draws.std() < 0.06
    fixed = ObjectiveConfig(ratio_std=0.0).resolved(0.5)
    assert {sample_ratio(fixed, step_generator(0, s)) for s in range(20)} == {0.5}


@pytest.mark.parametrize("kw", [dict(masking="uniform"), dict(lambda_latent=0.0), dict(masking="none"),
                                dict(objective="mlm")])
def test_ablation_switches_run(kw, chr20, monkeypatch):
    # each switch must change what runs, not only leave a finite loss: the AMTM weights (1/g²) are only
    # drawn with masking="amtm", pass 3 only runs with masking != "none", latent MTR only with lambda > 0
    import mergedna.objectives as objectives

    weights_drawn = []
    real = objectives.amtm_weights
    monkeypatch.setattr(objectives, "amtm_weights", lambda *a: weights_drawn.append(1) or real(*a))
    torch.manual_seed(0)
    tok = "none" if kw.get("objective") == "mlm" else "learned"
    model = MergeDNAForPretraining(preset("tiny", tokenizer=tok))
    out = MergeDNAPretrainer(model, ObjectiveConfig(**kw))(batch_from(chr20, [128, 100]), step_generator(0, 0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert bool(weights_drawn) == (kw.get("masking", "amtm") == "amtm" and kw.get("objective") != "mlm")
    assert ("amtm" in out) == (kw.get("masking") != "none" and kw.get("objective") != "mlm")
    if kw.get("objective") == "mlm":
        assert set(out) >= {"mlm", "mlm_acc"} and abs(float(out["mlm_masked_frac"]) - 0.15) < 0.02
    if kw.get("lambda_latent") == 0.0:
        assert "latent_mtr" not in out


def test_bad_objective_config():
    with pytest.raises(ValueError, match="masking"):
        ObjectiveConfig(masking="random")
    with pytest.raises(ValueError, match="ratio"):
        ObjectiveConfig(ratio_min=0.7, ratio_mean=0.5)


def test_pretraining_samples_around_the_models_merge_ratio(chr20):
    # one name for the paper's knob: merge_ratio (L/N) set on the model is what pretraining draws around
    model = MergeDNAForPretraining(preset("tiny", merge_ratio=0.3))
    obj = MergeDNAPretrainer(model, ObjectiveConfig())
    assert (obj.objective.ratio_mean, obj.objective.ratio_min, obj.objective.ratio_max) == (0.3, 0.2, 0.4)
    draws = [float(obj(batch_from(chr20, [64]), step_generator(0, s))["ratio"]) for s in range(5)]
    assert all(0.2 <= d <= 0.4 for d in draws) and abs(sum(draws) / 5 - 0.3) < 0.06


def test_masked_loss_of_fine_tuning_shares_the_encoder_and_reads_only_the_decoders(tmp_path, monkeypatch):
    """The auxiliary masked loss decodes from the classifier's own encoder: it builds no second encoder, and
    from a pretraining checkpoint it loads ω, ζ and the base head (not the encoder, whose tensors are never
    read); a classifier checkpoint, which has no decoders, leaves them new."""
    import mergedna.model as model_mod
    from mergedna.heads import MergeDNAForSequenceClassification
    from mergedna.objectives import MaskedModellingLoss
    from mergedna.seqio import SequenceFileError

    torch.manual_seed(0)
    pretrained = MergeDNAForPretraining(preset("tiny"))
    pretrained.save_pretrained(tmp_path / "ckpt")
    classifier = MergeDNAForSequenceClassification.from_pretrained(tmp_path / "ckpt", num_labels=2)
    built, real_init = [], model_mod.MergeDNAModel.__init__
    monkeypatch.setattr(model_mod.MergeDNAModel, "__init__", lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    aux = MaskedModellingLoss(classifier, seed=0, checkpoint=tmp_path / "ckpt")
    assert not built and aux.pretrainer.model.mergedna is classifier.mergedna
    for name, tensor in aux.pretrainer.model.state_dict().items():
        if not name.startswith("mergedna."):
            assert torch.equal(tensor, pretrained.state_dict()[name]), name
    import mergedna.pretrained as pretrained_mod

    read = []
    real_safe_open = pretrained_mod.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.inner = real_safe_open(*a, **k)

        def __enter__(self):
            self.file = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.file.get_tensor(key)

    monkeypatch.setattr(pretrained_mod, "safe_open", Spy)
    MaskedModellingLoss(classifier, seed=0, checkpoint=tmp_path / "ckpt")
    assert read and not any(k.startswith("mergedna.") for k in read)
    classifier.save_pretrained(tmp_path / "clf")
    assert aux.pretrainer.model.load_decoders(tmp_path / "clf") == 0
    with pytest.raises(SequenceFileError, match="decoders do not match"):
        MergeDNAForPretraining(preset("small")).load_decoders(tmp_path / "ckpt")
