"""Curves of a run from its ``metrics.jsonl``: training losses (smoothed) and validation losses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS_KEYS = ("loss", "mtr", "latent_mtr", "amtm", "mlm")
# tokenizer diagnostics of the validation rows (mergedna.tokenizer_stats): key -> legend label
TOKENIZER_KEYS = {"tok_untrained_f1_vs_model": "boundary F1 vs untrained",
                  "tok_run_length_f1_vs_model": "boundary F1 vs run-length",
                  "tok_fixed2_f1_vs_model": "boundary F1 vs fixed spans of 2",
                  "tok_p_equal_at_boundary": "P(x_i = x_i+1 | boundary)",
                  "tok_p_equal_within": "P(x_i = x_i+1 | within a token)"}


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str = "MergeDNA pretraining") -> Path | None:
    """Write a PNG: train losses, validation losses and, when the validation rows carry them, the
    tokenizer diagnostics (right panel; mean token length on its own axis). Returns the path, or
    None if no rows yet."""
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train" and not r.get("skipped")]
    val = [r for r in rows if r.get("split") == "val"]
    if not train and not val:
        return None
    tok = [r for r in val if any(k in r for k in TOKENIZER_KEYS)]
    fig, axes = plt.subplots(1, 3 if tok else 2, figsize=(16.5 if tok else 11, 4))
    ax_t, ax_v = axes[0], axes[1]
    ax_v.sharey(ax_t)
    for key in LOSS_KEYS:
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax_t.plot([p[0] for p in pts], _ema([p[1] for p in pts]), label=key)
        pts = [(r["step"], r[key]) for r in val if key in r]
        if pts:
            ax_v.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
    for ax, name in ((ax_t, "train (EMA 0.1)"), (ax_v, "validation (held-out region)")):
        ax.set_xlabel("optimizer step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax_t.set_ylabel("cross-entropy (nats per base)")
    if tok:
        _plot_tokenizer(axes[2], tok)
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def _plot_tokenizer(ax, rows: list[dict]) -> None:
    """Boundary F1 against each baseline and P(equal neighbours | boundary / within) on [0, 1];
    the mean token length on a second axis."""
    for key, label in TOKENIZER_KEYS.items():
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("share")
    ax.set_title("tokenizer on the validation windows")
    ax.grid(alpha=0.3)
    pts = [(r["step"], r["tok_mean_token_length"]) for r in rows if "tok_mean_token_length" in r]
    if pts:
        twin = ax.twinx()
        twin.plot([p[0] for p in pts], [p[1] for p in pts], color="k", ls="--", marker="s", ms=3,
                  label="mean token length")
        twin.set_ylabel("bases per token")
        twin.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper right")
