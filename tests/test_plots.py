"""ignite_mlp.plots: curves.png is a real PNG of the expected size."""

from pathlib import Path

from PIL import Image

from ignite_mlp.plots import plot_curves


def test_curves_png(tmp_path: Path) -> None:
    history = {"train_acc_epoch": [10, 20], "val_acc_epoch": [9, 15], "loss_epoch": [2.0, 1.5], "val_loss": [2.1, 1.8]}
    path = plot_curves(history, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1000, 400)
