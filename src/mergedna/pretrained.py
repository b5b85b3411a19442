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
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import MergeDNAConfig
from .seqio import SequenceFileError, atomic_write_dir, follow_umask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENCODER_PREFIX = "mergedna."  # every model class keeps the shared encoder (φ + ψ) under this name
_OUTSIDE = "\0"  # marks a checkpoint's non-encoder tensors when loading a bare encoder
log = logging.getLogger(__name__)


def _groups(keys) -> str:
    """Module groups of tensor names (``classifier.*``, ``mergedna.latent_encoder.*``) for one-line reports."""
    groups = set()
    for k in keys:
        parts = k.split(".")
        depth = 2 if parts[0] == ENCODER_PREFIX[:-1] else 1
        groups.add(".".join(parts[:depth]) + ".*" if len(parts) > depth else k)
    return ", ".join(sorted(groups))


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


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
        follow_umask(directory / WEIGHTS_NAME)  # safetensors writes 0600 whatever the umask
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically into ``directory``."""
        return atomic_write_dir(directory, self.write_files)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                        strict: bool = False, fresh: tuple[str, ...] = (), **config_overrides):
        """Build ``cls`` from a checkpoint directory; ``config_overrides`` change config fields
        (e.g. ``num_labels`` for a new head).

        Loading is strict about the shared encoder (``mergedna.*``, φ + ψ): a missing,
        unexpected or mis-shaped encoder tensor is an error listing them (e.g. a config override
        that adds layers). Outside the encoder, a checkpoint of another class may lack parts
        ``cls`` has (they are initialised new) or hold parts it lacks (they are dropped): a
        classifier from a pretraining checkpoint drops the decoders and gets a new head; a bare
        :class:`~mergedna.model.MergeDNAModel` takes the encoder of any checkpoint. ``strict``
        forbids both (every tensor must come from the checkpoint and be used); names starting
        with a ``fresh`` prefix are always initialised new (a new head on a fine-tuned model).
        What was loaded, dropped and added is logged in one line and kept in ``load_report``.
        """
        directory = Path(directory)
        config = load_config(directory).replace(**config_overrides)
        model = cls(config)
        w_path = directory / WEIGHTS_NAME
        state = read_weights(w_path, map_location)
        own = model.state_dict()
        wraps = any(k.startswith(ENCODER_PREFIX) for k in own)  # a head or pretraining model around φ + ψ
        if not wraps and any(k.startswith(ENCODER_PREFIX) for k in state):  # bare encoder from a wrapped checkpoint
            state = {k[len(ENCODER_PREFIX):] if k.startswith(ENCODER_PREFIX) else _OUTSIDE + k: v
                     for k, v in state.items()}
        elif wraps and not any(k.startswith(ENCODER_PREFIX) for k in state):  # a bare-encoder checkpoint
            state = {ENCODER_PREFIX + k: v for k, v in state.items()}

        def in_encoder(k: str) -> bool:
            return k.startswith(ENCODER_PREFIX) if wraps else not k.startswith(_OUTSIDE)

        new = {k for k in own if k.startswith(fresh)}
        missing = {k for k in own if k not in state and k not in new}
        unexpected = {k for k in state if k not in own and not k.startswith(fresh)}
        shaped = {k for k in own if k in state and k not in new and own[k].shape != state[k].shape}
        bad_missing = missing if strict else {k for k in missing if in_encoder(k)}
        bad_unexpected = unexpected if strict else {k for k in unexpected if in_encoder(k)}
        errors = []
        if bad_missing:
            errors.append(f"missing from the checkpoint: {_listing(bad_missing)}")
        if bad_unexpected:
            errors.append(f"in the checkpoint but not in {cls.__name__}: "
                          f"{_listing(k.removeprefix(_OUTSIDE) for k in bad_unexpected)}")
        if shaped:
            errors.append("shape differs: " + _listing(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                       for k in shaped))
        if errors:
            raise SequenceFileError(f"does not match the {cls.__name__} that its config.json (with overrides) "
                                    "builds: " + "; ".join(errors), file=w_path)
        loaded = {k: state[k] for k in own if k in state and k not in new}
        model.load_state_dict(loaded, strict=False)
        dropped = sorted(k.removeprefix(_OUTSIDE) for k in unexpected) + sorted(k for k in state if k.startswith(fresh))
        added = sorted(missing | new)
        model.load_report = (f"loaded {len(loaded)} tensors of {directory} into {cls.__name__}"
                             + (f"; dropped {_groups(dropped)}" if dropped else "")
                             + (f"; new (randomly initialised) {_groups(added)}" if added else ""))
        log.info("%s", model.load_report)
        return model


def read_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu", keep=None) -> dict:
    """The tensors of a ``model.safetensors`` file: all of them, or only those whose name ``keep(name)`` accepts
    (the others are never read). A damaged or truncated file is a :class:`SequenceFileError` naming it."""
    try:
        if keep is None:
            return load_file(str(path), device=str(map_location))
        with safe_open(str(path), framework="pt", device=str(map_location)) as weights:
            return {k: weights.get_tensor(k) for k in weights.keys() if keep(k)}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise SequenceFileError(f"cannot read the weights ({err}); the file is damaged or truncated",
                                file=path) from None


def load_config(directory: str | os.PathLike) -> MergeDNAConfig:
    """The :class:`MergeDNAConfig` of a checkpoint directory; a clear error naming the file when it
    is missing, not JSON or holds a wrong key or a wrong-typed value."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (cfg_path, w_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {directory} a mergedna checkpoint "
                                    f"(made by save_pretrained or pretrain's model/)?")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SequenceFileError(f"not valid JSON ({err})", file=cfg_path) from None
    if not isinstance(cfg, dict):
        raise SequenceFileError("not a JSON object", file=cfg_path)
    if cfg.get("model_type", "mergedna") != "mergedna":
        raise SequenceFileError(f"model_type is {cfg.get('model_type')!r}, expected 'mergedna'", file=cfg_path)
    try:
        return MergeDNAConfig.from_dict(cfg)
    except (TypeError, ValueError) as err:
        raise SequenceFileError(str(err), file=cfg_path) from None
