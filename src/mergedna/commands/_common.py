"""What several commands share: one spelling and one help text per argument, and defaults read from
the library (dataclass fields and function signatures) so that help texts cannot drift from them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import shlex
import sys

from ..config import PRESETS
from ..precision import PRECISIONS

PRECISION_HELP = ("autocast precision: auto (bf16 where it runs faster than fp32 on this device, see "
                  "mergedna.precision; else fp32), bf16 or fp32 (default: %(default)s)")


def field_defaults(cls) -> dict:
    """``{field name: default}`` of a dataclass (a ``default_factory`` called once)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def signature_defaults(func) -> dict:
    """``{parameter: default}`` of a function's keyword parameters that have one."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def add_option(p, flag: str, defaults: dict | None, help: str | None = None, dest: str | None = None, **kw):
    """``p.add_argument(flag, ...)`` with the default ``defaults[dest]`` (a dataclass field's or a parameter's;
    ``dest`` from the flag unless given), shown in the help by ``%(default)s`` unless it is None or a
    switch's. ``defaults=None``: no default at all (``argparse.SUPPRESS``), to tell which options were given."""
    dest = dest or flag.lstrip("-").replace("-", "_")
    if defaults is None:
        kw["default"] = argparse.SUPPRESS
    elif "default" not in kw:
        kw["default"] = defaults[dest]
        if kw["default"] is not None and not isinstance(kw["default"], bool) or not help:
            help = f"{help} (default: %(default)s)" if help else "(default: %(default)s)"
    return p.add_argument(flag, dest=dest, help=help, **kw)


def add_precision(p: argparse.ArgumentParser, default: str, why: str = "") -> None:
    """The one precision flag of every command that runs a model: ``--precision {auto,bf16,fp32}``."""
    if default not in (*PRECISIONS, argparse.SUPPRESS):
        raise ValueError(f"precision default must be one of {PRECISIONS}, got {default!r}")
    p.add_argument("--precision", choices=PRECISIONS, default=default,
                   help=PRECISION_HELP + (f"; {why}" if why else ""))


def add_model_source(p: argparse.ArgumentParser, model_help: str = "checkpoint directory",
                     preset_help: str = "random weights (plumbing checks only)") -> None:
    """``--model DIR`` or ``--preset NAME`` (random weights, ``--seed``), exactly one of them."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=model_help)
    src.add_argument("--preset", choices=sorted(PRESETS), help=preset_help)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed with --preset (default: %(default)s)")


def add_merge_ratio(p: argparse.ArgumentParser) -> None:
    p.add_argument("--merge-ratio", type=float, help="override the model's merge_ratio (L/N)")


def add_fasta_regions(p: argparse.ArgumentParser, batch_default: int) -> None:
    """A checkpoint (or random preset) read over FASTA records or regions, windows in batches:
    the arguments ``segment`` and ``tokenizer-stats`` share."""
    add_model_source(p)
    p.add_argument("--fasta", required=True, help="FASTA file (plain or gzip)")
    p.add_argument("--region", action="append", help="RECORD or RECORD:START-END (1-based, inclusive); repeatable")
    add_merge_ratio(p)
    p.add_argument("--batch-size", type=int, default=batch_default,
                   help="windows per forward pass (default: %(default)s)")


def merge_ratio_override(args) -> dict:
    """``{"merge_ratio": x}`` when ``--merge-ratio`` was given, else ``{}``."""
    return {"merge_ratio": args.merge_ratio} if args.merge_ratio is not None else {}


def command_line() -> str:
    """This process's command line as ``mergedna ...`` (recorded beside results)."""
    return shlex.join(["mergedna", *sys.argv[1:]])


def encoder_from_args(args, meaning: str):
    """``(encoder, note)``: the encoder of checkpoint ``--model``, or of ``--preset`` with random weights
    (seed ``--seed``, as the trainer initialises them) and a note saying what that means;
    ``--merge-ratio`` overrides the model's."""
    from ..config import preset
    from ..embed import load_encoder
    from ..tokenizer_stats import untrained_encoder

    if args.model:
        return load_encoder(args.model, **merge_ratio_override(args)), None
    note = f"note: preset {args.preset!r} with random weights (seed {args.seed}): {meaning}"
    return untrained_encoder(preset(args.preset, **merge_ratio_override(args)), args.seed), note
