"""Training checkpoints: atomic, the last k kept, exact resume.

Layout under the run directory::

    checkpoints/step-00001000/
        config.json, model.safetensors   # loadable by MergeDNAForPretraining.from_pretrained
        optimizer.pt                     # optimizer state (tensors and numbers only; loaded with weights_only)
        trainer_state.json               # step, model/train/objective configs, run metadata

A checkpoint directory appears by one ``rename`` of a complete temporary directory, so a
process killed at any moment (SIGKILL included) leaves only complete checkpoints.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ..pretrained import MergeDNAPreTrainedModel
from ..seqio import SequenceFileError, atomic_write_dir

STATE_NAME = "trainer_state.json"
OPTIM_NAME = "optimizer.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | Path, step: int, model: MergeDNAPreTrainedModel, model_state: dict,
                    optim_state: dict, trainer_state: dict, keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` atomically, then delete all but the newest ``keep_last``."""
    target = Path(run_dir) / "checkpoints" / f"step-{step:08d}"

    def write(tmp: Path):
        model.write_files(tmp, model_state)
        torch.save(optim_state, tmp / OPTIM_NAME)
        (tmp / STATE_NAME).write_text(json.dumps({**trainer_state, "step": step}, indent=2))

    atomic_write_dir(target, write)
    for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """Return (model state dict, optimizer state dict, trainer state) of a checkpoint directory."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
        model_state = load_file(str(path / "model.safetensors"))
        optim_state = torch.load(path / OPTIM_NAME, map_location="cpu", weights_only=True)
    except Exception as err:  # json, safetensors and torch each raise their own kind
        raise SequenceFileError(f"cannot read this checkpoint ({type(err).__name__}: {err}); delete it to resume "
                                "from the one before", file=path) from None
    return model_state, optim_state, state
