"""Optional ``transformers`` adapter: ``AutoModel.from_pretrained(dir)`` on a mergedna checkpoint.

Importing this module (it needs ``pip install mergedna[hf]``) registers the config and
model classes under ``model_type = "mergedna"``, so no ``trust_remote_code`` is needed::

    import mergedna.hf  # noqa: F401  (registers the classes)
    from transformers import AutoModel, AutoModelForMaskedLM
    encoder = AutoModel.from_pretrained("runs/ecoli/checkpoint")         # φ + ψ
    full = AutoModelForMaskedLM.from_pretrained("runs/ecoli/checkpoint")  # + ω, ζ, base head

The wrappers hold the very same submodules as the native classes (same parameter names),
and run the native ``forward``; the core package never imports ``transformers``.
"""

from __future__ import annotations

import dataclasses

from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                          PretrainedConfig, PreTrainedModel)

from .config import MergeDNAConfig
from .heads import MergeDNAForSequenceClassification
from .model import MergeDNAForPretraining, MergeDNAModel

_FIELDS = [f.name for f in dataclasses.fields(MergeDNAConfig)]


class MergeDNAHFConfig(PretrainedConfig):
    model_type = "mergedna"

    def __init__(self, **kwargs):
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
        kwargs.pop("mergedna_version", None)
        num_labels = own.pop("num_labels", 2)
        super().__init__(num_labels=num_labels, **kwargs)
        for key, value in MergeDNAConfig(**own).to_dict().items():
            if key != "num_labels":
                setattr(self, key, value)

    def to_mergedna(self) -> MergeDNAConfig:
        return MergeDNAConfig(**{k: getattr(self, k) for k in _FIELDS})


class _Base(PreTrainedModel):
    config_class = MergeDNAHFConfig
    base_model_prefix = "mergedna"

    def _init_weights(self, module):  # weights come from the checkpoint or the native initialiser
        pass


class MergeDNAHFModel(_Base):
    """φ + ψ (the native :class:`MergeDNAModel`)."""

    forward = MergeDNAModel.forward

    def __init__(self, config: MergeDNAHFConfig):
        super().__init__(config)
        native = MergeDNAModel(config.to_mergedna())
        self.local_encoder, self.latent_encoder = native.local_encoder, native.latent_encoder
        self.post_init()


class MergeDNAHFForPretraining(_Base):
    """φ + ψ + ω + ζ + base head (the native :class:`MergeDNAForPretraining`)."""

    forward = MergeDNAForPretraining.forward
    decode = MergeDNAForPretraining.decode

    def __init__(self, config: MergeDNAHFConfig):
        super().__init__(config)
        native = MergeDNAForPretraining(config.to_mergedna())
        self.mergedna = MergeDNAHFModel(config)
        self.latent_decoder, self.local_decoder, self.lm_head = (native.latent_decoder, native.local_decoder,
                                                                 native.lm_head)
        self.post_init()


class MergeDNAHFForSequenceClassification(_Base):
    forward = MergeDNAForSequenceClassification.forward

    def __init__(self, config: MergeDNAHFConfig):
        super().__init__(config)
        native = MergeDNAForSequenceClassification(config.to_mergedna())
        self.mergedna = MergeDNAHFModel(config)
        self.classifier = native.classifier
        self.pooler = native.pooler
        self.post_init()


AutoConfig.register("mergedna", MergeDNAHFConfig)
AutoModel.register(MergeDNAHFConfig, MergeDNAHFModel)
AutoModelForMaskedLM.register(MergeDNAHFConfig, MergeDNAHFForPretraining)
AutoModelForSequenceClassification.register(MergeDNAHFConfig, MergeDNAHFForSequenceClassification)
