"""The analytical FLOP count (mergedna.flops) against a brute-force count of the matmuls actually run.

``FlopCounterMode`` sees mm/bmm/addmm/baddbmm (and their backward), but not the CPU flash
kernel of ``scaled_dot_product_attention``; under the math SDPA backend full attention
decomposes into bmm and is counted too. With that, the analytical counts are exact: every
matmul the model runs is enumerated (including padded local-attention windows and the
latent merge's similarity matrix, which gets no backward), and everything uncounted is
elementwise. The tests therefore require equality, so a matmul added to the model without
updating the count fails here.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mergedna_testing import batch_from
from mergedna import flops
from mergedna.config import preset
from mergedna.model import MergeDNAForPretraining
from mergedna.objectives import MergeDNAPretrainer, ObjectiveConfig, step_generator

N, B = 300, 2  # N not a multiple of the window: the padded last window is counted


def measured(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def tiny_model(**overrides) -> MergeDNAForPretraining:
    torch.manual_seed(0)
    return MergeDNAForPretraining(preset("tiny", **overrides))


@pytest.fixture(scope="module")
def ids(chr20):
    return batch_from(chr20, [N] * B)


@pytest.mark.parametrize("ratio", [0.5, 0.43])
def test_token_counts_follow_the_model(one_thread, ids, ratio):
    model = tiny_model()
    cfg = model.config
    with torch.no_grad():
        enc = model.mergedna(ids, merge_ratio=ratio, output_hidden_states=True)
        local = [h.shape[1] for h in enc.hidden_states[:cfg.local_encoder_layers]]
        counts = flops.local_encoder_counts(cfg, N, ratio)
        assert counts == local + [enc.local.tokens.z.shape[1]]
        latent = model.mergedna.latent_encoder(enc.local.tokens, merge_ratio=cfg.latent_merge_ratio,
                                               output_hidden_states=True)
    assert flops.latent_merge_counts(cfg, counts[-1]) == [h.shape[1] for h in latent.hidden_states] + \
        [latent.tokens.z.shape[1]]


@pytest.mark.parametrize("tokenizer", ["learned", "fixed", "none"])
def test_full_pass_and_inference(one_thread, ids, tokenizer):
    model = tiny_model(tokenizer=tokenizer)
    cfg = model.config
    with torch.no_grad():
        assert measured(lambda: model(ids, merge_ratio=0.45)) == sum(flops.mtr_pass(cfg, N, B, 0.45).values())
        assert measured(lambda: model.mergedna(ids)) == sum(flops.inference(cfg, N, B).values())


def test_latent_merge_pass(one_thread, ids):
    model = tiny_model()
    cfg = model.config
    with torch.no_grad():
        enc = model.mergedna(ids, merge_ratio=0.5)

        def pass2():
            latent = model.mergedna.latent_encoder(enc.local.tokens, merge_ratio=cfg.latent_merge_ratio)
            model.decode(latent.tokens.z, enc.local, latent.assign)

        assert measured(pass2) == sum(flops.latent_merge_pass(cfg, N, B, 0.5).values())


@pytest.mark.parametrize("objective", [{"pass3_budget": "window"}, {"lambda_latent": 0.0, "pass3_budget": "window"},
                                       {"masking": "none"}, {"masking": "uniform", "pass3_budget": "window"}, {}])
def test_pretraining_step_forward_and_backward(one_thread, ids, objective):
    model = tiny_model()
    ocfg = ObjectiveConfig(**objective)
    trainer = MergeDNAPretrainer(model, ocfg)
    count = measured(lambda: trainer(ids, step_generator(0, 0), ratio=0.5)["loss"].backward())
    expect = flops.pretraining_step(model.config, N, B, 0.5, ocfg.lambda_latent, ocfg.masking)
    if ocfg.pass3_budget == "window" or ocfg.masking == "none":
        assert count == expect["total"]
    else:  # pass 3 budgets masked and visible bases apart: its token count is L give or take the rounding
        assert abs(count / expect["total"] - 1) < 0.01
    assert expect["forward"] == sum(expect["components"].values()) == sum(expect["passes"].values())


def test_backward_is_twice_forward_except_merge_similarity_and_grouping_input():
    cfg = preset("small")
    step = flops.pretraining_step(cfg, 4096)
    c = step["components"]
    assert step["backward"] == 2 * (step["forward"] - c["latent_merge_similarity"]) - c["grouping"]
    assert step["passes"]["mtr"] == step["passes"]["amtm"]


def test_local_attention_is_linear_in_length():
    cfg = preset("small")
    per_bp = [sum(flops.local_encoder(cfg, n).values()) / n for n in (1024, 16384)]
    assert per_bp[1] == pytest.approx(per_bp[0], rel=1e-3)


@pytest.mark.parametrize("kind", ["esm", "bert"])
def test_peer_counts(one_thread, kind):
    transformers = pytest.importorskip("transformers")
    D, layers, inter, vocab, n = 64, 2, 256, 4107, 70
    common = dict(vocab_size=vocab, hidden_size=D, num_attention_heads=4, num_hidden_layers=layers,
                  intermediate_size=inter, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "esm":
        model = transformers.EsmForMaskedLM(transformers.EsmConfig(
            **common, position_embedding_type="rotary", pad_token_id=1, mask_token_id=2))
        encoder = model.esm
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**common, pad_token_id=0))
        encoder = model.bert
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, vocab, (B, n), generator=g)
    labels = tokens.masked_fill(torch.rand(B, n, generator=g) > 0.15, -100)
    train = measured(lambda: model(input_ids=tokens, labels=labels).loss.backward())
    assert train == flops.peer_training_step(D, layers, inter, vocab, n, B)["total"]
    with torch.no_grad():
        infer = measured(lambda: encoder(input_ids=tokens))
    assert infer == sum(flops.peer_encoder(D, layers, inter, n, B).values())
