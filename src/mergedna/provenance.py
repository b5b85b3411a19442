"""Where a number came from: command, date, commit, machine. Recorded beside every result."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__
from .precision import bf16_is_native, bf16_speedup
from .seqio import write_json_atomic, write_text_atomic  # noqa: F401  (kept importable from here)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def _git(*args) -> str | None:
    """Asked once per process: the code that runs is the code that was checked out at start."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
        return res.stdout.strip() if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_metadata(command: str | None = None) -> dict:
    """Command, UTC date, git commit of the package's checkout (and whether it is dirty), machine."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"command": command if command is not None else shlex.join(sys.argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "git_dirty": bool(status) if status is not None else None,
            "mergedna_version": __version__,
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "host": platform.node(), "platform": platform.platform(),
                        "python": platform.python_version(), "torch": torch.__version__,
                        "cpu_bf16_native": bf16_is_native("cpu"),
                        "cpu_bf16_speedup": round(bf16_speedup("cpu"), 2),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
