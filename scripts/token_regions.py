"""Mean token length by region class (exon, repeat/low-complexity, intron, intergenic) on a region of
GRCh37 chr20, for one or more checkpoints beside the untrained tokenizer (same config and seed),
run-length merging at the same token budget and fixed spans of 2. Definitions and the repeat
callers: src/mergedna/token_regions.py and docs/tokenizer_diagnostics.md.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/token_regions.py \
        --model runs/tok15/learned/model --model runs/tok15/detached/model --model runs/tok15/fixed/model \
        --name tok15_regions

writes results/<name>/regions.json, regions.md and regions.png. A model's label is the name of the
directory holding it (``learned`` for ``runs/tok15/learned/model``) unless given as LABEL=DIR.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mergedna.embed import load_encoder
from mergedna.precision import PRECISIONS, autocast
from mergedna.provenance import run_metadata, write_json_atomic, write_text_atomic
from mergedna.segment import iter_regions
from mergedna.token_regions import (class_bases, format_markdown, plot_regions, read_refseq_exons, region_classes,
                                    region_table, sample_windows, tokenize_windows, window_batch)
from mergedna.tokenizer_stats import fixed_span_assign, reference_seed, run_length_assign, untrained_encoder

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def model_label(spec: str) -> tuple[str, str]:
    if "=" in spec:
        label, path = spec.split("=", 1)
        return label, path
    p = Path(spec)
    return (p.parent.name if p.name == "model" else p.name) or spec, spec


def build_tokenizers(models, ratio_override, probe, batch_size, precision):
    """label -> fn(ids, base_mask) -> assign; baselines identical on the probe windows share one column."""
    fns, seen = {}, []

    def add(kind, label, fn):
        with autocast(precision):
            a = tokenize_windows(fn, probe, batch_size)
        for i, (k, lab, ref) in enumerate(seen):
            if k == kind and kind != "model" and torch.equal(ref, a):
                new = lab[:-1] + f", {label})"
                fns[new] = fns.pop(lab)
                seen[i] = (k, new, ref)
                return
        name = label if kind == "model" else f"{kind} ({label})"
        fns[name] = fn
        seen.append((kind, name, a))

    info = {}
    for label, path in models:
        enc = load_encoder(path)
        cfg = enc.config
        ratio = cfg.merge_ratio if ratio_override is None else ratio_override
        seed, seed_from = reference_seed(path, None)
        ref = untrained_encoder(cfg, seed)
        info[label] = {"path": str(path), "merge_ratio": ratio, "tokenizer": cfg.tokenizer, "window": cfg.max_length,
                       "untrained_seed": seed, "untrained_seed_from": seed_from}
        add("model", label, lambda ids, m, e=enc, r=ratio: e.local_encoder(ids, m, r).assign)
        add("untrained", label, lambda ids, m, e=ref, r=ratio: e.local_encoder(ids, m, r).assign)
        add("run-length", label, lambda ids, m, c=cfg, r=ratio: run_length_assign(
            ids, m, r, c.local_encoder_layers, c.merge_scope, c.window_size))
    fns["fixed spans of 2"] = lambda ids, m: fixed_span_assign(m, 2)
    return fns, info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="checkpoint directory, or LABEL=DIR; repeatable")
    p.add_argument("--fasta", default=str(DATA / "genomes" / "GRCh37_chr20.fa.gz"))
    p.add_argument("--exons", default=str(DATA / "annotation" / "hg19_RefSeq_exon_chr20_chrX.txt.gz"),
                   help="RefSeq exon SAF table (GeneID Chr Start End Strand, 1-based inclusive)")
    p.add_argument("--region", default="20:50000001-60000000",
                   help="RECORD:START-END, 1-based inclusive (default the held-out 10 Mb of chr20)")
    p.add_argument("--windows", type=int, default=512, help="windows sampled from the region")
    p.add_argument("--window", type=int, help="bases per window (default the first model's max_length)")
    p.add_argument("--max-n-fraction", type=float, default=0.1)
    p.add_argument("--merge-ratio", type=float, help="override every model's merge_ratio (L/N)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the windows")
    p.add_argument("--seed", type=int, default=0, help="window sampling and bootstrap seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--name", default="token_regions", help="results/<name>/")
    p.add_argument("--results-dir", default=str(REPO / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        models = [model_label(m) for m in args.model]
        for _, path in models:
            if not (Path(path) / "config.json").is_file():
                raise ValueError(f"{path}: not a checkpoint directory (no config.json)")
        exons = read_refseq_exons(args.exons)
        ((record, offset, ids),) = list(iter_regions(args.fasta, [args.region]))
        window = args.window or load_encoder(models[0][1]).config.max_length
        labels, repeat_info = region_classes(ids, record, offset, exons)
        starts = sample_windows(ids, args.windows, window, args.seed, args.max_n_fraction)
        probe = window_batch(ids, starts[: min(len(starts), 64)], window)
        tokenizers, model_info = build_tokenizers(models, args.merge_ratio, probe, args.batch_size, args.precision)
        with autocast(args.precision):
            table = region_table(tokenizers, ids, labels, starts, window, args.batch_size, args.bootstrap, args.seed)
    except ValueError as err:
        print(f"token_regions: error: {err}", file=sys.stderr)
        return 2
    lab_w = labels[starts[:, None] + np.arange(window)[None, :]]
    bases = class_bases(lab_w)
    out = Path(args.results_dir) / args.name
    meta = run_metadata(shlex.join([sys.executable, *sys.argv]))
    result = {"meta": meta, "seed": args.seed, "fasta": args.fasta, "exons": args.exons, "region": args.region,
              "windows": int(len(starts)), "window": window, "max_n_fraction": args.max_n_fraction,
              "bootstrap": args.bootstrap, "precision": args.precision, "models": model_info,
              "repeat_callers": {"sdust": "pydustmasker DustMasker, window 64, score threshold 20",
                                 "str": "pytrf STRFinder, default minimum repeats (12, 7, 5, 4, 4, 4)",
                                 "calls_in_region": repeat_info},
              "class_bases_in_region": class_bases(labels), "class_bases_in_windows": bases,
              "token_class": "class of the token's midpoint base; exon > repeat > intron > intergenic",
              "tokenizers": table, "seconds": time.time() - t0}
    write_json_atomic(out / "regions.json", result)
    md = [f"# Mean token length by region class: {args.region}", "",
          f"{len(starts)} windows of {window} bases (seed {args.seed}, at most {args.max_n_fraction:.0%} N), "
          f"tokens classed by their midpoint base; mean [95% bootstrap interval over windows, {args.bootstrap} "
          "resamples] (tokens). Classes: docs/tokenizer_diagnostics.md.", "",
          *format_markdown(table, bases), "",
          f"Repeat calls in the region: sdust {repeat_info['sdust']['bases']} bases, pytrf STR "
          f"{repeat_info['str']['bases']} bases, union {repeat_info['union_bases']}.", "",
          f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; commit {meta['git_commit']}"
          f"{' (dirty)' if meta['git_dirty'] else ''}; machine {meta['machine']['cpu']}; "
          f"torch threads 1; {time.time() - t0:.0f} s."]
    write_text_atomic(out / "regions.md", "\n".join(md) + "\n")
    plot_regions(table, out / "regions.png", f"{args.region}: {len(starts)} windows of {window} bases")
    print("\n".join(md))
    print(f"wrote {out}/regions.json, regions.md, regions.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
