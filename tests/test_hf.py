"""The optional transformers adapter loads native checkpoints through the Auto classes."""

import pytest
import torch

from mergedna_testing import batch_from
from mergedna.config import preset
from mergedna.model import MergeDNAForPretraining

transformers = pytest.importorskip("transformers")


def test_auto_classes_load_a_native_checkpoint(tmp_path, chr20):
    import mergedna.hf  # noqa: F401  (registers the classes)

    torch.manual_seed(0)
    model = MergeDNAForPretraining(preset("tiny")).eval()
    model.save_pretrained(tmp_path / "ckpt")
    ids = batch_from(chr20, [100, 50])
    encoder = transformers.AutoModel.from_pretrained(tmp_path / "ckpt").eval()
    full = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ckpt").eval()
    clf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt", num_labels=3)
    with torch.no_grad():
        assert torch.equal(encoder(ids).last_hidden_state, model.mergedna(ids).last_hidden_state)
        assert torch.equal(full(ids).logits, model(ids).logits)
        assert clf(ids).logits.shape == (2, 3)
