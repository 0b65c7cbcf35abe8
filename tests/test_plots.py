"""ignite_mlp.plots: real PNGs and image arrays of the sizes the layout promises."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ignite_mlp.plots import confusion_matrix_figure, image_grid, plot_curves, save_png


def test_curves_png(tmp_path: Path) -> None:
    history = {"train_acc_epoch": [10, 20], "val_acc_epoch": [9, 15], "loss_epoch": [2.0, 1.5], "val_loss": [2.1, 1.8]}
    path = plot_curves(history, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (1000, 400)


def test_image_grid_layout_and_pixels() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    grid = image_grid(images, ["ant", "bee", "cat", "dog\nsecond line", "emu"], ncols=2, scale=3)
    # 3 rows of 2; cells 24 px wide, 24 px of image + 2 title lines of 14 px; 2 px between cells.
    assert grid.shape == (3 * (24 + 28) + 4 * 2, 2 * 24 + 3 * 2, 3) and grid.dtype == np.uint8
    # Image 3 (row 1, column 1) sits at (2 + 52 + 2, 2 + 24 + 2), each pixel a 3x3 block.
    cell = grid[56 : 56 + 24, 28 : 28 + 24]
    assert np.array_equal(cell[::3, ::3], images[3].transpose(1, 2, 0))
    assert np.array_equal(cell[2::3, 2::3], images[3].transpose(1, 2, 0))
    assert (grid[56 + 24 : 56 + 52, 28 : 28 + 24] < 128).any()  # the title is drawn below it


def test_image_grid_grey_default_scale_no_titles() -> None:
    grey = np.full((3, 1, 32, 32), 200, dtype=np.uint8)
    grid = image_grid(grey)
    # CIFAR-sized images are enlarged 3x (96 px); one row of 3 without title bands.
    assert grid.shape == (96 + 2 * 2, 3 * 96 + 4 * 2, 3)
    assert (grid[2:98, 2:98] == 200).all()


@pytest.mark.parametrize(
    "images",
    [np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 2, 4, 4), np.uint8), np.zeros((0, 3, 4, 4), np.uint8)],
)
def test_image_grid_refuses_what_it_cannot_draw(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_grid(images)


def test_confusion_matrix_figure_sizes_and_shading() -> None:
    matrix = [[5, 0, 1], [0, 6, 0], [2, 2, 2]]
    image = confusion_matrix_figure(matrix, ["ant", "bee", "cat"])
    # 16 px caption + 80 px labels + 3 cells of 36 px + 4 px margin.
    assert image.shape == (208, 208, 3)
    origin = 96
    full_row = image[origin + 36 + 2, origin + 36 + 2]  # bee -> bee: the whole row, darkest
    empty = image[origin + 36 + 2, origin + 2]  # bee -> ant: nothing, white
    assert full_row.tolist() == [8, 48, 107] and empty.tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="3x3"):
        confusion_matrix_figure([[1, 2], [3, 4]], ["ant", "bee", "cat"])
    many = confusion_matrix_figure(np.ones((100, 100), np.int64), [f"class {i}" for i in range(100)])
    assert many.shape == (16 + 80 + 100 * 8 + 4, 16 + 80 + 100 * 8 + 4, 3)  # cells shrink to 8 px


def test_save_png_round_trip(tmp_path: Path) -> None:
    image = image_grid(np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4), scale=1)
    path = save_png(image, tmp_path / "grid.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and np.array_equal(np.asarray(img.convert("RGB")), image)
