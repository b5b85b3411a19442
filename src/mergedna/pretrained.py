"""``save_pretrained`` / ``from_pretrained``: a directory with ``config.json`` and ``model.safetensors``.

No pickle anywhere on load. The directory is written to a temporary sibling and renamed
into place, so a crash mid-save leaves either the old checkpoint or the new one, never a
half-written one. Every model class keeps the shared encoder under the ``mergedna.``
prefix, so a pretraining checkpoint loads into a classification model (the decoders are
skipped and the new head is initialised, as ``transformers`` does).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import MergeDNAConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
log = logging.getLogger(__name__)


def atomic_write_dir(target: str | os.PathLike, write_fn) -> Path:
    """Call ``write_fn(tmp_dir)`` then move ``tmp_dir`` onto ``target`` (replacing an existing one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_fn(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


class MergeDNAPreTrainedModel(nn.Module):
    """Base class: holds the config, initialises weights, saves and loads checkpoints."""

    config: MergeDNAConfig

    def __init__(self, config: MergeDNAConfig):
        super().__init__()
        self.config = config

    def init_weights(self, modules: list[nn.Module] | None = None):
        """Initialise ``modules`` (default: the whole model): normal(0, init_std) for linear and
        embedding weights, with GPT-2's depth scaling on residual output projections."""
        std = self.config.init_std
        n_blocks = (self.config.local_encoder_layers + self.config.latent_encoder_layers
                    + self.config.latent_decoder_layers + self.config.local_decoder_layers)
        named = [(n, m) for root in (modules or [self]) for n, m in root.named_modules()]
        for name, module in named:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # GPT-2: residual output projections get std / sqrt(2 * depth)
                scale = (2 * n_blocks) ** -0.5 if name.endswith(("attn.proj", "ffn.w3")) else 1.0
                nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self, module: nn.Module | None = None) -> int:
        return sum(p.numel() for p in (module or self).parameters())

    def write_files(self, directory: Path, state: dict | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` into an existing directory (not atomic by
        itself: callers go through :func:`atomic_write_dir`). ``state`` overrides the state dict
        (e.g. one gathered from a sharded model)."""
        state = self.state_dict() if state is None else state
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        config = {**self.config.to_dict(), "model_type": "mergedna",
                  "architectures": [type(self).__name__], "mergedna_version": __version__}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically into ``directory``."""
        return atomic_write_dir(directory, self.write_files)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        **config_overrides):
        """Build ``cls`` from a checkpoint directory. ``config_overrides`` change config fields
        (e.g. ``num_labels`` for a new head). Weights the class has but the checkpoint lacks are
        freshly initialised and logged; checkpoint weights the class does not use are ignored."""
        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (cfg_path, w_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {directory} a mergedna checkpoint "
                                        f"(made by save_pretrained)?")
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_path}: not valid JSON ({err})") from None
        if cfg.get("model_type", "mergedna") != "mergedna":
            raise ValueError(f"{cfg_path}: model_type is {cfg.get('model_type')!r}, expected 'mergedna'")
        config = MergeDNAConfig.from_dict(cfg).replace(**config_overrides)
        model = cls(config)
        state = load_file(str(w_path), device=str(map_location))
        own = model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
        if not usable:
            raise ValueError(f"{w_path}: no weight matches {cls.__name__}; is it a mergedna checkpoint?")
        missing = sorted(set(own) - set(usable))
        model.load_state_dict(usable, strict=False)
        if missing:
            log.info("%s: newly initialised (not in checkpoint): %s", cls.__name__, ", ".join(missing))
        if mismatched:
            log.warning("%s: shape mismatch, newly initialised: %s", cls.__name__, ", ".join(mismatched))
        return model
