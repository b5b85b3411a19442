"""Run folders have an owner: one run per ``--out`` folder, never two mixed.

A command that writes a run folder (``pretrain``, ``finetune``) first calls :func:`claim_run_dir`,
which records the run in ``run.json`` (command, the settings that define the run, when it
started, provenance) and decides what may happen to a folder that already holds something:

* a new or empty folder, or one holding no run: it becomes this run's;
* a folder holding a run (``run.json``, or the files of a run made before ``run.json`` existed):
  refused, unless ``resume`` (the same command with the same defining settings: only settings
  such as ``steps``, ``time_limit`` or ``progress`` may change) or ``overwrite`` (the run's files
  are deleted first: the ones listed in :data:`RUN_FILES`, nothing else in the folder);
* a model checkpoint folder (``config.json`` + ``model.safetensors``, e.g. a pretraining run's
  ``model/``): refused, even with ``overwrite``; write the run elsewhere.

Temporaries a killed process left in the folder (:func:`~mergedna.seqio.remove_stale_temps`)
are removed on every claim.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from .seqio import SequenceFileError, remove_stale_temps, write_json_atomic

RUN_RECORD = "run.json"
FIT_STATE = "finetune_state.pt"  # an unfinished fine-tuning run's training state, deleted when it finishes
# every file or folder a pretraining or fine-tuning run writes at the top of its folder
RUN_FILES = (RUN_RECORD, "run_config.json", "metrics.jsonl", "metrics.json", "summary.json", "curves.png",
             "dev_curve.png", "test_predictions.tsv", "checkpoints", "model", FIT_STATE)
# settings that may change between a run and its --resume
RESUMABLE = frozenset({"resume", "overwrite", "steps", "time_limit", "progress", "device", "log_every", "val_every",
                       "ckpt_every", "keep_last", "compile", "activation_checkpointing", "cache_dir", "max_bad_steps",
                       "bf16", "out"})


class RunFolderError(ValueError):
    """The output folder holds another run (or a checkpoint) and may not be reused as asked."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_identity(settings: dict) -> dict:
    """The settings that define a run: all but :data:`RESUMABLE`, FASTA paths made absolute."""
    out = {k: v for k, v in settings.items() if k not in RESUMABLE}
    if isinstance(out.get("fasta"), list):
        out["fasta"] = [os.path.abspath(p) for p in out["fasta"]]
    return json.loads(json.dumps(out))  # tuples -> lists, as they come back from JSON


def differences(a: dict, b: dict) -> list[str]:
    """``key: old -> new`` for every top-level key whose value differs. A key one side lacks counts as None: a
    setting added to the tool after a run was made matches that run at its off value (None)."""
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _read_record(folder: Path) -> dict | None:
    path = folder / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SequenceFileError(f"unreadable run record ({err}); delete it or use --overwrite", file=path) from None
    return record if isinstance(record, dict) else {}


def _legacy_command(folder: Path) -> str | None:
    """The command of a run written before run.json existed, from the files it left."""
    if (folder / "run_config.json").exists() or (folder / "checkpoints").is_dir():
        return "pretrain"
    if (folder / "metrics.json").exists() or (folder / "test_predictions.tsv").exists():
        return "finetune"
    if (folder / "model").is_dir() or (folder / "metrics.jsonl").exists():
        return "unknown"
    return None


def claim_run_dir(out: str | os.PathLike, command: str, settings: dict, resume: bool = False,
                  overwrite: bool = False, meta: dict | None = None) -> dict:
    """Make ``out`` the folder of this ``command`` run with ``settings`` (rules in the module
    docstring); write ``run.json`` and return it. Raises :class:`RunFolderError`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        raise RunFolderError(f"--out {out} is a model checkpoint; write the {command} run to another folder "
                             "(a run's model goes to <out>/model)")
    identity = run_identity(settings)
    record = _read_record(out) if out.is_dir() else None
    held = record.get("command", "unknown") if record is not None else (_legacy_command(out) if out.is_dir() else None)
    if held is not None and overwrite:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        record, held = None, None
    elif held is not None and resume:
        if held != command:
            raise RunFolderError(f"--out {out} holds a {held} run, not a {command} run: --resume cannot continue it")
        diff = "; ".join(differences(record.get("settings") or {}, identity)) if record is not None else ""
        if diff:
            raise RunFolderError(f"--resume: settings differ from the run in {out} ({diff}); resume with the "
                                 "same settings, or start again with --overwrite")
    elif held is not None:
        started = f", started {record['started']}" if record and record.get("started") else ""
        hint = "--resume to continue it, " if command == held else ""
        raise RunFolderError(f"--out {out} already holds a {held} run{started}; pass {hint}--overwrite to delete it "
                             "and start again, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    if record is None or not resume:
        record = {"command": command, "settings": identity, "started": _now(), **({"meta": meta} if meta else {})}
    else:
        record = {**record, "resumed": [*record.get("resumed", []), _now()]}
    write_json_atomic(out / RUN_RECORD, record)
    return record


def check_checkpoint(checkpoint: str | os.PathLike, saved_train: dict | None, settings: dict) -> None:
    """Refuse to resume from ``checkpoint`` when the run settings it was saved with differ from
    ``settings`` in anything but :data:`RESUMABLE`."""
    if saved_train is None:
        return
    old, new = run_identity(saved_train), run_identity(settings)
    if old != new:
        raise RunFolderError(f"--resume: checkpoint {checkpoint} was written by a run with other settings "
                             f"({'; '.join(differences(old, new))}); resume with those settings or use --overwrite")
