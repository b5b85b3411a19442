"""``mergedna compare``: several ``mergedna benchmark`` results folders side by side
(:func:`mergedna.benchmark.compare_table`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..benchmark import compare_table


def add_parser(subparsers) -> None:
    c = subparsers.add_parser("compare", help="side-by-side table of several benchmark results folders")
    c.add_argument("results", nargs="+", help="folders written by mergedna benchmark --out")
    c.add_argument("--names", nargs="+", help="column names (default: folder names)")
    c.set_defaults(func=run)


def run(args) -> int:
    names = args.names or [Path(d).name for d in args.results]
    if len(names) != len(args.results):
        raise SystemExit("mergedna compare: give one --names entry per results folder")
    loaded = []
    for d in args.results:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise SystemExit(f"mergedna compare: {path} not found (run mergedna benchmark --out {d} first)")
        loaded.append(json.loads(path.read_text()))
    print(compare_table(loaded, names), end="")
    return 0
