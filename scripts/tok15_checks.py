"""The mechanism figures of issue 15 quoted in docs/method.md and the README, on the committed chr20 fixture:

1. grouping-embedding / Local Encoder block gradient RMS after one pretraining step, per merge temperature,
   and with the gradient switched off (merge_grad="none");
2. P(masked edge base = its visible neighbour) for AMTM spans in base coordinates vs the tokens' own spans,
   beside the background P(x_i = x_i+1);
3. windows whose latent grouping differs alone vs in a padded batch, under bf16 autocast and in fp32.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/tok15_checks.py [--out results/tok15/checks.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from mergedna.config import preset
from mergedna.model import MergeDNAForPretraining
from mergedna.objectives import MergeDNAPretrainer, ObjectiveConfig, amtm_weights, step_generator
from mergedna.provenance import run_metadata
from mergedna.seqio import iter_fasta, write_text_atomic
from mergedna.vocab import PAD

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "chr20_slice.fa"


def batch(seq: torch.Tensor, lengths, start=0) -> torch.Tensor:
    ids = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = seq[start + 500 * i:start + 500 * i + n]
    return ids


def rms(params) -> float:
    return float(torch.cat([p.grad.flatten() for p in params if p.grad is not None] or [torch.zeros(1)])
                 .pow(2).mean().sqrt())


def gradient_ratio(seq, temperature: float, merge_grad: str) -> float:
    torch.manual_seed(0)
    model = MergeDNAForPretraining(preset("tiny", merge_temperature=temperature, merge_grad=merge_grad))
    MergeDNAPretrainer(model, ObjectiveConfig())(batch(seq, [512] * 4), step_generator(0, 0))["loss"].backward()
    enc = model.mergedna.local_encoder
    return rms(enc.group_proj.parameters()) / rms(enc.blocks.parameters())


def edge_equality(seq, spans: str) -> tuple[float, float, int]:
    torch.manual_seed(0)
    model = MergeDNAForPretraining(preset("tiny")).eval()
    obj = MergeDNAPretrainer(model, ObjectiveConfig(mask_spans=spans))
    ids = batch(seq, [1024] * 5)
    same = ids[:, 1:] == ids[:, :-1]
    hits = total = 0
    with torch.no_grad():
        enc = model.mergedna(ids, merge_ratio=0.5)
        latent = model.mergedna.latent_encoder(enc.local.tokens, merge_ratio=0.5)
        weights = amtm_weights(latent.assign, latent.tokens.count, enc.local.tokens.mask)
        for step in range(40):
            masked = obj._choose_masked(weights, enc.local, latent.tokens.lengths, step_generator(0, step))
            edges = (masked[:, 1:] & ~masked[:, :-1]) | (~masked[:, 1:] & masked[:, :-1])
            hits += int((edges & same).sum())
            total += int(edges.sum())
    return hits / total, float(same.float().mean()), total


def batch_dependent_windows(seq, bf16: bool) -> int:
    torch.manual_seed(0)
    model = MergeDNAForPretraining(preset("tiny")).eval()
    differ = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(10):
            ids = batch(seq, [256, 200, 256], start=i * 300)

            def groups(x):
                enc = model.mergedna(x, merge_ratio=0.5)
                return model.mergedna.latent_encoder(enc.local.tokens, merge_ratio=0.5).assign

            alone, batched = groups(ids[1:2, :200]), groups(ids)
            differ += not torch.equal(alone[0], batched[1, :alone.shape[1]])
    return differ


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "results" / "tok15" / "checks.md"))
    args = p.parse_args()
    torch.set_num_threads(1)
    seq = torch.from_numpy(dict(iter_fasta(FIXTURE))["20:30000001-30006000"].astype("int64"))
    meta = run_metadata()
    lines = ["# Issue 15: mechanism checks on the chr20 fixture", "",
             f"`{shlex.join(['python', 'scripts/tok15_checks.py', *sys.argv[1:]])}`; {meta['date']}, commit "
             f"{meta['git_commit'][:7]}{' (dirty)' if meta.get('git_dirty') else ''}, {meta['machine']['cpu']}, "
             f"torch {meta['machine']['torch']}; `tiny`, init seed 0, one thread.", "",
             "| grouping / block gradient RMS after one step | ratio |", "|---|---|"]
    for t in (0.03, 0.1, 0.3):
        lines.append(f"| relaxed merge, T = {t} | {gradient_ratio(seq, t, 'relaxed'):.3f} |")
    lines.append(f"| merge_grad = none | {gradient_ratio(seq, 0.1, 'none'):.3f} |")
    lines += ["", "| AMTM spans | P(edge base = visible neighbour) | background P(x_i = x_i+1) | edges |",
              "|---|---|---|---|"]
    for spans in ("bases", "tokens"):
        p_edge, bg, n = edge_equality(seq, spans)
        lines.append(f"| {spans} | {p_edge:.4f} | {bg:.4f} | {n} |")
    lines += ["", "| precision | windows of 10 whose latent grouping differs alone vs in a padded batch |", "|---|---|",
              f"| bf16 autocast | {batch_dependent_windows(seq, True)} |",
              f"| fp32 | {batch_dependent_windows(seq, False)} |", ""]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
