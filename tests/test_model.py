"""The model end to end: heads, gradients, padding invariance, presets, checkpoints, bf16, compile."""

import pytest
import torch

from mergedna_testing import batch_from
from mergedna.attention import key_bias, rotary_cos_sin
from mergedna.config import PAPER_MODULE_PARAMS, preset
from mergedna.heads import MergeDNAForSequenceClassification, MergeDNAForTokenClassification
from mergedna.model import MergeDNAForPretraining, MergeDNAModel
from mergedna.precision import autocast
from mergedna.vocab import MASK, N, PAD


def module_params(model: MergeDNAForPretraining) -> dict:
    mods = {"local_encoder": model.mergedna.local_encoder, "latent_encoder": model.mergedna.latent_encoder,
            "latent_decoder": model.latent_decoder, "local_decoder": model.local_decoder}
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MergeDNAForPretraining(preset("tiny")).eval()


def test_pretraining_head_shapes(tiny, chr20):
    ids = batch_from(chr20, [256, 200, 31])
    out = tiny(ids, labels=ids)
    assert out.logits.shape == (3, 256, 4)
    assert out.encoder.last_hidden_state.shape == (3, 128, 64)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    merged = tiny(ids, latent_merge_ratio=0.5)
    assert merged.logits.shape == (3, 256, 4)
    assert merged.encoder.token_mask.sum(1).tolist() == [64, 50, 8]  # K = L/2 (L = 128, 100, 16)
    assert torch.equal(merged.encoder.latent_counts.sum(1), torch.tensor([128., 100., 16.]))


def test_classification_head_shapes(chr20):
    ids = batch_from(chr20, [120, 64])
    seq = MergeDNAForSequenceClassification(preset("tiny", num_labels=3))
    out = seq(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.pooled.shape == (2, 64) and torch.isfinite(out.loss)
    tok = MergeDNAForTokenClassification(preset("tiny", num_labels=5))
    labels = torch.randint(0, 5, ids.shape)
    out = tok(ids, labels=labels)
    assert out.logits.shape == (2, 120, 5) and torch.isfinite(out.loss)


@pytest.mark.parametrize("cls", [MergeDNAForPretraining, MergeDNAForSequenceClassification,
                                 MergeDNAForTokenClassification])
def test_every_parameter_gets_a_gradient(cls, chr20):
    torch.manual_seed(1)
    model = cls(preset("tiny"))
    ids = batch_from(chr20, [256, 180])
    if cls is MergeDNAForPretraining:
        # the latent merge path must also leave no parameter out
        loss = model(ids, labels=ids).loss + model(ids, labels=ids, latent_merge_ratio=0.5).loss
    elif cls is MergeDNAForSequenceClassification:
        loss = model(ids, labels=torch.tensor([0, 1])).loss
    else:
        loss = model(ids, labels=ids.clamp_max(1)).loss
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any("group_proj" in n for n, _ in model.named_parameters())  # the grouping embedding learns


@pytest.mark.parametrize("scope", ["sequence", "window"])
def test_outputs_do_not_depend_on_the_rest_of_the_batch(chr20, scope):
    torch.manual_seed(2)
    model = MergeDNAForPretraining(preset("tiny", merge_scope=scope)).eval()
    target = batch_from(chr20, [300], start=1000)
    longer = batch_from(chr20, [512], start=2000)
    shorter = batch_from(chr20, [40], start=3000)
    batch = torch.full((3, 512), PAD)
    batch[0] = longer[0]
    batch[1, :300] = target[0]
    batch[2, :40] = shorter[0]
    with torch.no_grad():
        for latent in (None, 0.5):
            alone = model(target, latent_merge_ratio=latent)
            mixed = model(batch, latent_merge_ratio=latent)
            assert torch.equal(alone.encoder.assign[0], mixed.encoder.assign[1, :300])
            assert torch.allclose(alone.logits[0], mixed.logits[1, :300], atol=1e-5)
            L = int(alone.encoder.token_mask[0].sum())
            assert torch.allclose(alone.encoder.last_hidden_state[0, :L], mixed.encoder.last_hidden_state[1, :L],
                                  atol=1e-5)


def test_padding_content_is_ignored(tiny, chr20):
    ids = batch_from(chr20, [100, 60])
    mask = ids != PAD
    junk = ids.clone()
    junk[1, 60:] = N  # the padded positions hold something else, the mask says they are padding
    with torch.no_grad():
        assert torch.equal(tiny(ids).logits[1, :60], tiny(junk, attention_mask=mask).logits[1, :60])


def test_same_seed_same_result(chr20):
    ids = batch_from(chr20, [128, 77])
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = MergeDNAForPretraining(preset("tiny"))
        outs.append(model(ids, labels=ids))
    assert torch.equal(outs[0].logits, outs[1].logits)
    torch.manual_seed(124)
    assert not torch.equal(MergeDNAForPretraining(preset("tiny"))(ids).logits, outs[0].logits)


def test_bad_inputs_get_clear_errors(tiny):
    with pytest.raises(ValueError, match="right-padded"):
        tiny(torch.tensor([[PAD, 0, 1, 2]]), attention_mask=torch.tensor([[False, True, True, True]]))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        tiny(torch.tensor([[0, 1, 9]]))
    with pytest.raises(ValueError, match="at least one real base"):
        tiny(torch.tensor([[0, 1, 2], [PAD, PAD, PAD]]))
    with pytest.raises(ValueError, match="batch, length"):
        tiny(torch.tensor([0, 1, 2]))


def test_mask_token_is_its_own_input(tiny, chr20):
    # MASK is accepted and is an input of its own: distinct from every base and from N at the masked positions
    ids = batch_from(chr20, [64])
    with torch.no_grad():
        outs = {}
        for name, value in (("mask", MASK), ("n", N), ("a", 0)):
            x = ids.clone()
            x[0, 10:20] = value
            outs[name] = tiny(x).logits[0, 10:20]
    assert torch.isfinite(outs["mask"]).all()
    assert not torch.allclose(outs["mask"], outs["n"]) and not torch.allclose(outs["mask"], outs["a"])


def test_preset_parameter_counts():
    def counts(name):
        with torch.device("meta"):
            return module_params(MergeDNAForPretraining(preset(name)))

    assert counts("tiny")["total"] < 1e6
    assert 10e6 <= counts("small")["total"] <= 20e6
    assert 90e6 <= counts("base")["total"] <= 115e6
    paper = counts("paper")
    for name, expected in PAPER_MODULE_PARAMS.items():
        assert abs(paper[name] / expected - 1) < 0.03, (name, paper[name])


def test_save_load_round_trip_is_bit_identical(tmp_path, chr20):
    torch.manual_seed(3)
    model = MergeDNAForPretraining(preset("tiny", merge_scope="window")).eval()
    ids = batch_from(chr20, [200, 90])
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = MergeDNAForPretraining.from_pretrained(path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    # the encoder transfers into a classifier; the head is new
    clf = MergeDNAForSequenceClassification.from_pretrained(path, num_labels=3)
    assert torch.equal(clf.mergedna.local_encoder.embed.weight, model.mergedna.local_encoder.embed.weight)
    # saving over an existing checkpoint replaces it whole
    MergeDNAForPretraining(preset("tiny")).save_pretrained(path)
    assert not torch.equal(MergeDNAForPretraining.from_pretrained(path).lm_head.weight, model.lm_head.weight)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MergeDNAModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        MergeDNAModel.from_pretrained(tmp_path)


def test_bf16_autocast_forward_backward(chr20):
    torch.manual_seed(4)
    model = MergeDNAForPretraining(preset("tiny"))
    ids = batch_from(chr20, [512, 400])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
        out2 = model(ids, labels=ids, latent_merge_ratio=0.5)
    (out.loss + out2.loss).backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("tokenizer", ["none", "fixed"])
def test_fixed_tokenization_ablations(tokenizer, chr20):
    model = MergeDNAForPretraining(preset("tiny", tokenizer=tokenizer, fixed_span=4))
    ids = batch_from(chr20, [64, 30])
    out = model(ids, labels=ids)
    expected = [64, 30] if tokenizer == "none" else [16, 8]
    assert out.encoder.token_mask.sum(1).tolist() == expected
    assert not any("group_proj" in n for n, _ in model.named_parameters())


def test_loss_falls_on_real_sequence(chr20):
    torch.manual_seed(5)
    model = MergeDNAForPretraining(preset("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = batch_from(chr20, [256] * 4)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_torch_compile_on_blocks(chr20):
    torch.manual_seed(6)
    model = MergeDNAForPretraining(preset("tiny")).eval()
    ids = batch_from(chr20, [128, 100])
    with torch.no_grad():
        enc = model.mergedna(ids)
        tokens = enc.local.tokens
        block = model.mergedna.latent_encoder.blocks[0]
        cos, sin = rotary_cos_sin(tokens.pos, model.config.head_dim, model.config.rope_theta)
        bias = key_bias(tokens.mask)
        ref = block(tokens.z, cos, sin, bias)
        local_ref = block(tokens.z, cos, sin, bias, window=16)
        for b in model.modules():
            if type(b).__name__ == "Block":
                b.compile(dynamic=True)
        assert torch.allclose(block(tokens.z, cos, sin, bias), ref, atol=1e-4)
        assert torch.allclose(block(tokens.z, cos, sin, bias, window=16), local_ref, atol=1e-4)
        # the whole model runs with compiled blocks (merge decisions may differ by rounding)
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.slow
def test_small_forward_backward_on_real_chr20_windows_in_the_default_precision(tmp_path):
    """bf16 autocast where native (fp32 elsewhere: a forced bf16 step here takes minutes on AVX2)."""
    from mergedna_testing import SHARED_DATA
    from mergedna.data.genome import Genome, GenomeSampler

    fasta = SHARED_DATA / "genomes" / "GRCh37_chr20.fa.gz"
    if not fasta.is_file():
        pytest.skip(f"{fasta} not present")
    genome = Genome.from_fasta(fasta, cache_dir=tmp_path)
    ids = GenomeSampler(genome, window=4096, seed=0).batch(0, 2)  # (2, 4096) real chr20 windows
    torch.manual_seed(0)
    model = MergeDNAForPretraining(preset("small"))
    with autocast("auto"):
        out = model(ids, labels=ids)
    out.loss.backward()
    assert out.logits.shape == (2, 4096, 4) and out.encoder.token_mask.sum(1).tolist() == [2048, 2048]
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_explicit_full_attention_matches_sdpa():
    """The matmul form of full attention (chosen for short sequences on a CPU) equals SDPA, values and
    gradients, with padded keys and without; and the dispatch picks it only where it was measured to pay."""
    from mergedna.attention import EXPLICIT_MAX_TOKENS, explicit_pays, full_attention

    g = torch.Generator().manual_seed(0)
    B, H, n, hd = 2, 2, 23, 8
    mask = torch.arange(n)[None, :] < torch.tensor([23, 9])[:, None]
    for bias in (None, key_bias(mask, torch.randint(1, 4, (B, n), generator=g).float())):
        outs, grads = [], []
        for explicit in (False, True):
            qkv = [torch.randn(B, H, n, hd, generator=torch.Generator().manual_seed(i)).requires_grad_()
                   for i in range(3)]
            out = full_attention(*qkv, bias, explicit=explicit)
            (out * torch.linspace(-1, 1, hd)).sum().backward()
            outs.append(out)
            grads.append([t.grad for t in qkv])
        assert torch.allclose(outs[0], outs[1], atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))
    short = torch.zeros(1, 1, EXPLICIT_MAX_TOKENS[torch.bfloat16], 8, dtype=torch.bfloat16, requires_grad=True)
    longer = torch.zeros(1, 1, short.shape[2] + 1, 8, dtype=torch.bfloat16, requires_grad=True)
    assert explicit_pays(short) and not explicit_pays(longer)
    with torch.no_grad():  # inference: SDPA's forward is the faster one
        assert not explicit_pays(short)
    assert not explicit_pays(torch.zeros(1, 1, 20, 8, requires_grad=True))  # fp32: the two are level, SDPA stays


def test_local_attention_matches_sdpa_with_a_window_mask():
    """The explicit windowed attention (chosen for CPU speed) equals SDPA over the full sequence with
    a block-diagonal mask, padding keys masked (padding queries are not compared)."""
    from mergedna.attention import _local_attention

    g = torch.Generator().manual_seed(0)
    B, n, H, hd, w = 2, 37, 2, 8, 16
    q, k, v = (torch.randn(B, H, n, hd, generator=g) for _ in range(3))
    lengths = torch.tensor([37, 20])
    mask = torch.arange(n)[None, :] < lengths[:, None]
    size = torch.randint(1, 4, (B, n), generator=g).float()
    bias = key_bias(mask, size)
    got = _local_attention(q, k, v, bias, w).transpose(1, 2)  # (B, n, H, hd)
    block = (torch.arange(n)[:, None] // w) == (torch.arange(n)[None, :] // w)  # same window
    full_bias = torch.where(block[None], bias[:, None, :], torch.tensor(float("-inf")))  # (B, n, n)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=full_bias[:, None]).transpose(1, 2)
    assert torch.allclose(got[mask], ref[mask], atol=1e-5)
