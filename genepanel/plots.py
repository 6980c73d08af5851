"""Figures written next to the results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from genepanel.io import atomic_write


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` as PNG atomically, then free it."""
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    pyplot().close(fig)


def plot_history(history: list[dict[str, float]], path: Path) -> None:
    """The paper's Fig. 3 shape: temperature, mean max probability and losses per epoch."""
    plt = pyplot()

    rows = [h for h in history if "epoch" in h]
    ep = np.arange(1, len(rows) + 1)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.plot(ep, [h["temperature"] for h in rows], color="tab:red", label="temperature")
    ax1.set_yscale("log")
    ax1.set_ylabel("temperature", color="tab:red")
    twin = ax1.twinx()
    twin.plot(ep, [h["mean_max_prob"] for h in rows], color="black", label="mean max prob")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("mean of row-max probability")
    ax2.plot(ep, [h["train_loss"] for h in rows], label="train loss (soft selection)")
    ax2.plot(ep, [h["val_loss"] for h in rows], label="validation MSE (argmax selection)")
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("MSE")
    ax2.legend()
    fig.tight_layout()
    save_png(fig, path)


def plot_sizes(table, path: Path) -> None:
    """Test error against panel size for the panel and its baselines (``sizes.tsv``)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {
        "linear_refit_test_mse": "final panel (linear refit)",
        "cae_linear_refit_test_mse": "concrete AE panel before refinement",
        "greedy_panel_test_mse": "greedy subset selection",
        "topvar_panel_test_mse": "top-variance genes",
        "random_panel_test_mse": "random panels (mean)",
        "hvg_panel_test_mse": "highly variable genes",
        "pca_bound_test_mse": "PCA bound",
    }
    for col, label in labels.items():
        if col in table and table[col].notna().any():
            ax.plot(table["k"], table[col], marker="o", label=label)
    ax.set_xlabel("panel size k")
    ax.set_ylabel("test MSE")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)
