"""Command-line arguments that several subcommands share (one spelling and one help text each)."""

from __future__ import annotations

import argparse

from .config import PRESETS


def add_model_source(p: argparse.ArgumentParser, model_help: str = "checkpoint directory",
                     preset_help: str = "random weights (plumbing checks only)") -> None:
    """``--model DIR`` or ``--preset NAME`` (random weights, ``--seed``), exactly one of them."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=model_help)
    src.add_argument("--preset", choices=sorted(PRESETS), help=preset_help)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed with --preset")
