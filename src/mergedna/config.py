"""Model configuration and presets (docs/method.md §3).

Every preset has the paper's shape (Local Encoder 4 blocks with a merge after each,
then full-attention Latent Encoder, Latent Decoder and a local-attention Local
Decoder); the small ones are narrower and shallower. ``paper`` is the 380M model:
D = 1024, 16 heads and a SwiGLU width of 2752 put each module within 1% of the
paper's 51M / 253M / 51M / 25M.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MERGE_SCOPES = ("sequence", "window")
MERGE_GRADS = ("relaxed", "none")
TOKENIZERS = ("learned", "none", "fixed")
POOLINGS = ("mean", "max", "cls", "attention", "flatten", "mean_flatten")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list,), "dict": (dict,),
          "None": (type(None),)}


def _type_ok(value, annotation: str) -> bool:
    """``value`` fits the field's annotation, e.g. ``"int | None"`` (an int where a float is expected is fine;
    a bool is never a number)."""
    allowed = [t.strip() for t in str(annotation).split("|")]
    if isinstance(value, bool):
        return "bool" in allowed
    return any(isinstance(value, _TYPES.get(name, (object,))) for name in allowed)


@dataclass
class MergeDNAConfig:
    """All architecture knobs. Names follow the paper where it names them."""

    hidden_size: int = 256  # D
    num_heads: int = 4
    ffn_size: int = 688  # SwiGLU inner width
    local_encoder_layers: int = 4  # φ: local attention + one merge per block
    latent_encoder_layers: int = 10  # ψ: full attention
    latent_decoder_layers: int = 2  # ω: full attention, pretraining only
    local_decoder_layers: int = 2  # ζ: local attention over bases
    window_size: int = 16  # w, local attention window (tokens in φ, bases in ζ)
    dropout: float = 0.0  # residual dropout: on each block's attention and SwiGLU output before it is added to
    #                       the stream (training only; not in the paper, whose encoder has none); fine-tuning
    #                       can set it on any model (it holds no weights)
    conv_stem: int = 0  # > 0 (odd): a depthwise convolution of this width over the base embeddings, added to
    #                     them before φ's first block, so each base starts from its ordered neighbourhood
    #                     (not in the paper; docs/method.md, "Convolution stem"); 0 = the paper's plain embedding
    group_dim: int = 64  # d_g, grouping-embedding width used for merge similarity
    merge_ratio: float = 0.5  # L/N at inference
    merge_scope: str = "sequence"  # top-r over the whole sequence, or inside each window
    merge_grad: str = "relaxed"  # "relaxed": the losses shape which pairs merge; "none": no gradient (ablation)
    merge_temperature: float = 0.1  # T of the relaxed merge degree sigmoid((score - θ)/T), cosine units
    proportional_attention: bool = True  # ToMe: add log(size) to key logits
    latent_merge_ratio: float = 0.5  # K/L for the latent global merge (pretraining pass 2)
    tokenizer: str = "learned"  # "learned" (merging), "none" (one token per base) or "fixed" (pool spans)
    fixed_span: int = 2  # span length for tokenizer="fixed"
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    max_length: int = 4096  # longest input the model is meant for (documentation and downstream checks)
    init_std: float = 0.02
    num_labels: int = 2  # classification heads
    classifier_dropout: float = 0.1
    # sequence head (heads.py): "mean" (the paper's size-weighted mean over bases), "max" (each feature's
    # largest value over tokens: a motif anywhere), "cls" (a learned
    # token that never merges, prepended to the Local Encoder's output; needs cls_token), "attention"
    # (attention pooling over bases with a learned absolute-position term), "flatten" (per-base features
    # flattened into a linear layer: fixed-length tasks of at most pool_length bases), "mean_flatten" (their sum)
    pooling: str = "mean"
    cls_token: bool = False  # MergeDNAModel prepends a learned CLS token to the Latent Encoder's input
    pool_length: int | None = None  # bases the "attention"/"flatten" heads cover (default max_length)
    pool_bin: int = 1  # flatten heads: the largest value of each channel over bins of this many bases, then
    #                    flattened (the CNN baseline's max-pools shrink positions 8x); 1 = every base its own slot
    label_names: list | None = None  # optional names of the classes, index = label id

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")
        if self.merge_scope not in MERGE_SCOPES:
            raise ValueError(f"merge_scope must be one of {MERGE_SCOPES}, got {self.merge_scope!r}")
        if self.merge_grad not in MERGE_GRADS:
            raise ValueError(f"merge_grad must be one of {MERGE_GRADS}, got {self.merge_grad!r}")
        if self.merge_temperature <= 0:
            raise ValueError(f"merge_temperature must be > 0, got {self.merge_temperature}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.window_size < 2 or self.window_size % 2:
            raise ValueError(f"window_size must be an even number >= 2, got {self.window_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.conv_stem < 0 or (self.conv_stem and self.conv_stem % 2 == 0):
            raise ValueError(f"conv_stem must be 0 (off) or an odd width, got {self.conv_stem}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pool_bin < 1:
            raise ValueError(f"pool_bin must be >= 1 (1 = no binning), got {self.pool_bin}")
        if self.pooling == "cls" and not self.cls_token:
            raise ValueError("pooling='cls' needs cls_token=True")
        if not 0.0 < self.merge_ratio <= 1.0:
            raise ValueError(f"merge_ratio must be in (0, 1], got {self.merge_ratio}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MergeDNAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"model_type", "architectures", "mergedna_version", "extra"})
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        for f in dataclasses.fields(cls):
            if f.name in d and not _type_ok(d[f.name], f.type):
                raise ValueError(f"{f.name} must be {f.type}, got {d[f.name]!r}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes) -> "MergeDNAConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict] = {
    # < 1M parameters: unit tests
    "tiny": dict(hidden_size=64, num_heads=4, ffn_size=176, local_encoder_layers=4, latent_encoder_layers=4,
                 latent_decoder_layers=2, local_decoder_layers=2, group_dim=32, max_length=1024),
    # ~14M: CPU experiments
    "small": dict(hidden_size=256, num_heads=4, ffn_size=688, local_encoder_layers=4, latent_encoder_layers=10,
                  latent_decoder_layers=2, local_decoder_layers=2, group_dim=64),
    # ~106M
    "base": dict(hidden_size=768, num_heads=12, ffn_size=2048, local_encoder_layers=4, latent_encoder_layers=8,
                 latent_decoder_layers=2, local_decoder_layers=1, group_dim=64),
    # the paper's 380M model
    "paper": dict(hidden_size=1024, num_heads=16, ffn_size=2752, local_encoder_layers=4, latent_encoder_layers=20,
                  latent_decoder_layers=4, local_decoder_layers=2, group_dim=64),
}

# Parameter counts the paper reports per module (docs/method.md §3); the paper preset is tested against them.
PAPER_MODULE_PARAMS = {"local_encoder": 51e6, "latent_encoder": 253e6, "latent_decoder": 51e6,
                       "local_decoder": 25e6, "total": 380e6}


def preset(name: str, **overrides) -> MergeDNAConfig:
    """The named preset's config, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return MergeDNAConfig(**{**PRESETS[name], **overrides})
