"""Throughput of the pretraining window sampler, single thread.

    python benchmarks/bench_sampler.py --fasta ../shared/data/genomes/GRCh37_chr20.fa.gz

Builds the genome cache in a fresh directory (unless ``--cache-dir`` is given) to time the
first load, times a cached reload, then calls ``GenomeSampler.batch`` for consecutive steps
for ``--seconds`` and prints bases per second. Appends one JSON line (machine, date,
commit, command, torch version, numbers) to ``benchmarks/results/sampler.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from mergedna.data.genome import Genome, GenomeSampler
from mergedna.provenance import run_metadata

RESULTS = Path(__file__).resolve().parent / "results" / "sampler.jsonl"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", nargs="+", required=True, help="FASTA file(s): plain, gzip or bgzip")
    parser.add_argument("--window", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cache-dir", default=None, help="genome cache (default: a fresh temporary directory)")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="mergedna-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        t0 = time.perf_counter()
        genome = Genome.from_fasta(args.fasta, cache_dir=cache_dir)
        first_load = time.perf_counter() - t0
        first_hit, genome_bp, n_records = genome.cache_hit, len(genome), len(genome.records)
        t0 = time.perf_counter()
        genome = Genome.from_fasta(args.fasta, cache_dir=cache_dir)
        cached_load = time.perf_counter() - t0
        sampler = GenomeSampler(genome, window=args.window)
        sampler.batch(0, args.batch)  # warm-up
        steps, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < args.seconds:
            sampler.batch(steps, args.batch)
            steps += 1
        del sampler, genome  # release the memmap before the temporary cache goes

    bp_per_s = steps * args.batch * args.window / elapsed
    meta = run_metadata()
    row = {
        "bench": "sampler",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": f"{meta['git_commit']}{'-dirty' if meta['git_dirty'] else ''}",
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "torch": torch.__version__,
        "machine": meta["machine"],
        "threads": torch.get_num_threads(),
        "fasta": [os.path.basename(f) for f in args.fasta],
        "genome_bp": genome_bp,
        "records": n_records,
        "window": args.window,
        "batch": args.batch,
        "first_load_s": round(first_load, 3),
        "first_load_was_cached": first_hit,
        "cached_load_s": round(cached_load, 4),
        "steps": steps,
        "seconds": round(elapsed, 3),
        "bp_per_s": round(bp_per_s),
        "batches_per_s": round(steps / elapsed, 1),
    }
    print(
        f"genome: {genome_bp:,} bp in {n_records} records; first load {first_load:.2f} s"
        f"{' (already cached)' if first_hit else ' (parse + cache build)'}, cached load {cached_load * 1e3:.1f} ms\n"
        f"sampler: {steps} batches of {args.batch}x{args.window} in {elapsed:.1f} s = "
        f"{bp_per_s / 1e6:.1f} M bp/s ({steps / elapsed:.0f} batches/s, 1 thread)"
    )
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
