"""Training checkpoints: atomic, the last k kept, exact resume.

Layout under the run directory::

    checkpoints/step-00001000/
        config.json, model.safetensors   # loadable by MergeDNAForPretraining.from_pretrained
        optimizer.pt                     # optimizer state (tensors and numbers only; loaded with weights_only)
        trainer_state.json               # step, model/train/objective configs, run metadata

A checkpoint directory appears by one ``rename`` of a complete temporary directory, so a
process killed at any moment (SIGKILL included) leaves only complete checkpoints.

Fine-tuning keeps one file instead (:func:`save_fit_state`, ``<run>/finetune_state.pt``): its models are
small, and it is rewritten after every dev evaluation, also by one rename.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ..pretrained import MergeDNAPreTrainedModel
from ..seqio import SequenceFileError, atomic_path, atomic_write_dir

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


def save_fit_state(path, stepped, optimizer, scheduler, **loop) -> None:
    """Write what :func:`mergedna.finetune.fit` needs to continue exactly: the trained parameters (``stepped``:
    the model's trainable ones and the auxiliary decoders', by name), optimizer and schedule, torch's global
    generators (the CPU's: data order; CUDA's where it is in use: dropout there), and ``loop``: the step count
    ``total`` and the fields of :class:`~mergedna.finetune.FitProgress` (counters, curve, best-on-dev state). One ``torch.save`` through
    a temporary file and a rename, so a kill at any moment leaves the previous state or this one."""
    state = {"params": {n: p.detach() for n, p in stepped}, "optimizer": optimizer.state_dict(),  # saved as they are
             "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None, **loop}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_fit_state(path, stepped, optimizer, scheduler, total: int) -> dict:
    """Load a :func:`save_fit_state` file into the parameters, optimizer and schedule; return the rest (the
    loop's entries, and ``torch_rng``, which ``fit`` sets once the epoch's data iterator exists). Raises
    :class:`~mergedna.seqio.SequenceFileError` (naming the file) when it cannot be read or belongs to another
    run (other trainable parameters or step count)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch each raise their own kind
        raise SequenceFileError(f"cannot read this fine-tuning state ({type(err).__name__}: {err}); delete it to "
                                "start the run again", file=path) from None
    names = [n for n, _ in stepped]
    if sorted(state["params"]) != sorted(names) or state["total"] != total:
        raise SequenceFileError(f"this fine-tuning state belongs to another run ({state['total']} steps, "
                                f"{len(state['params'])} trained tensors; this run: {total}, {len(names)}); "
                                "delete it or use --overwrite", file=path)
    with torch.no_grad():
        for name, param in stepped:
            param.copy_(state["params"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state
