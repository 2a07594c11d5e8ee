"""Accuracy and loss per epoch, with stage boundaries marked: the plot people look at first."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from carclf.train.stages import Stage  # noqa: E402


def epoch_table(metrics_csv: str | Path) -> pd.DataFrame:
    """One row per epoch from Lightning's CSVLogger file (step rows are dropped)."""
    df = pd.read_csv(metrics_csv)
    cols = [
        c for c in ("train/loss_epoch", "train/acc_epoch", "val/loss", "val/acc") if c in df.columns
    ]
    return df.dropna(subset=["epoch"]).groupby("epoch")[cols].mean(numeric_only=True).reset_index()


def plot_curves(metrics_csv: str | Path, stages: list[Stage], out: str | Path) -> Path:
    table = epoch_table(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, what in zip(axes, ("acc", "loss"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            col = f"{split}/{what}_epoch" if split == "train" else f"{split}/{what}"
            if col in table and table[col].notna().any():
                ax.plot(table["epoch"] + 1, table[col], style, label=split, markersize=3)
        for s in stages:
            ax.axvline(s.start_epoch + 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(
                s.start_epoch + 0.6,
                0.98,
                s.name,
                transform=ax.get_xaxis_transform(),
                fontsize=8,
                va="top",
                color="dimgrey",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("carclf training: accuracy and loss per epoch (dashed lines: stage starts)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
