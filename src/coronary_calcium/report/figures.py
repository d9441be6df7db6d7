"""Figures as in the paper: the confusion matrix ("truth table") and training / validation curves."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from coronary_calcium.report.classification import CLASS_NAMES  # noqa: E402
from coronary_calcium.report.files import atomic_path  # noqa: E402


def plot_confusion_matrix(cm: np.ndarray, path: str | Path, title: str = "Confusion matrix") -> Path:
    """PNG of a 2x2 confusion matrix with counts and row percentages."""
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
    ax.imshow(cm, cmap="Blues")
    totals = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(2):
        for j in range(2):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, f"{cm[i, j]}\n{100 * cm[i, j] / totals[i, 0]:.1f} %", ha="center", va="center",
                    color="white" if dark else "black")
    ax.set_xticks([0, 1], [f"pred. {n}" for n in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"true {n}" for n in CLASS_NAMES])
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def plot_curves(series: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, title: str = "Training") -> Path:
    """PNG with one panel for losses and one for accuracies; `series` maps a tag to (step, value) pairs."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for tag, points in series.items():
        if not points:
            continue
        ax = axes[0] if "loss" in tag.lower() else axes[1]
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=tag)
    for ax, name in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
