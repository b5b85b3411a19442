"""Curves of a run from its ``metrics.jsonl``: training losses (smoothed) and validation losses."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..seqio import atomic_path  # noqa: E402

LOSS_KEYS = ("loss", "mtr", "latent_mtr", "amtm", "mlm")


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
    """Write a two-panel PNG (train left, validation right). Returns the path, or None if no rows yet."""
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train" and not r.get("skipped")]
    val = [r for r in rows if r.get("split") == "val"]
    if not train and not val:
        return None
    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
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
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png_path
