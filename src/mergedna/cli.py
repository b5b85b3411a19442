"""``python -m mergedna.cli`` and the ``mergedna`` console script: the commands of :mod:`mergedna.commands`."""

from __future__ import annotations

import sys

from .commands import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
