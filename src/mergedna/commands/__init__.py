"""The ``mergedna`` command line: one module per subcommand, each with ``add_parser(subparsers)`` and
``run(args) -> int``, over library modules that neither parse arguments nor print. Entry points:
the ``mergedna`` console script and ``python -m mergedna.cli`` both call :func:`main`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import (benchmark, compare, demo, embed, eval_variants, finetune, info, pretrain, score_variants, segment,
               tokenizer_stats)

# in the order `mergedna --help` lists them
COMMANDS = (info, pretrain, demo, finetune, benchmark, compare, embed, segment, tokenizer_stats, score_variants,
            eval_variants)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergedna", description="MergeDNA: pretrain, fine-tune, benchmark, embed "
                                                                  "and inspect a DNA model with a learned tokenizer.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed ``argv`` (default ``sys.argv[1:]``), with the words themselves as ``args.argv`` (``pretrain``
    tells the options given from their defaults by them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args


class _Report(logging.Handler):
    """Library log lines (what a checkpoint load kept, dropped and added) as ``mergedna <cmd>: ...`` on
    stdout, whatever sys.stdout is now; stderr is for errors."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        print(f"mergedna {self.command}: {record.getMessage()}", file=sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand. Expected failures (bad input files, bad settings) print one line naming the
    file, record and position instead of a traceback; set MERGEDNA_DEBUG=1 to see the traceback."""
    args = parse(argv)
    logger = logging.getLogger("mergedna.pretrained")  # what --model / --init-from loaded, in one line
    report, level = _Report(args.command), logger.level
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as err:
        if os.environ.get("MERGEDNA_DEBUG"):
            raise
        if isinstance(err, KeyError) and err.args:
            msg = err.args[0]
        elif isinstance(err, OSError) and err.strerror and err.filename:  # disk full, read-only, permission
            msg = f"{err.filename}: {err.strerror}"
        else:
            msg = err
        print(f"mergedna {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:  # only while a command runs: library calls stay silent
        logger.removeHandler(report)
        logger.setLevel(level)
