"""PNG figures of a run: training curves (and, later, sample grids and confusion matrices)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train against validation, side by side, saved as PNG."""
    epochs = range(1, len(history["loss_epoch"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss_epoch"], label="train")
    ax_loss.plot(epochs, history["val_loss"], label="validation")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.plot(epochs, history["train_acc_epoch"], label="train")
    ax_acc.plot(epochs, history["val_acc_epoch"], label="validation")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
