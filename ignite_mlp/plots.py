"""Pictures of a run: training curves, image grids and confusion matrices, as PNG or RGB arrays.

:func:`image_grid` and :func:`confusion_matrix_figure` return ``(H, W, 3)`` uint8 arrays drawn
with Pillow, not matplotlib figures: TensorBoard logs them every epoch, and a matplotlib
confusion matrix takes ~0.2 s to draw here, a third of a CIFAR-10 epoch; these take milliseconds.
Their sizes follow from the layout constants below, so callers (and tests) can work them out.
:func:`save_png` writes either to disk.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ignite_mlp.files import write_atomic

# Image grids: each title line gets a band this tall under its image; cells are this far apart.
TITLE_LINE_PX = 14
GRID_PAD_PX = 2
# Small images are enlarged (nearest neighbour, whole pixels) until their longer side reaches
# this, so a 32x32 CIFAR image is legible and a two-word title fits under it.
GRID_MIN_CELL_PX = 96
# Confusion matrices: a caption band ("true", "predicted"), then class names, then the cells.
CM_CAPTION_PX = 16
CM_LABEL_PX = 80
CM_MARGIN_PX = 4
CM_MAX_CELL_PX = 36
CM_MAX_CELLS_PX = 720  # with many classes the cells shrink so the matrix stays about this size
CM_MIN_CELL_PX = 8
_CM_DARK = np.array([8, 48, 107], dtype=np.float64)  # matplotlib's darkest "Blues"


def plot_curves(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train against validation, side by side, saved as PNG
    (atomically: a reader never sees half a file)."""
    # Imported here, when a run ends: importing matplotlib takes ~0.5 s, a tenth of a start.
    # A bare Figure (no pyplot) needs no display and keeps no global state.
    from matplotlib.figure import Figure

    epochs = range(1, len(history["loss_epoch"]) + 1)
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
    return Path(path)


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def _as_uint8_nchw(images: Any) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3) or len(array) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 (N, C, H, W) array with 1 or 3 channels, got {array.dtype} {array.shape}"
        )
    return array


def grid_scale(height: int, width: int) -> int:
    """The whole-pixel enlargement :func:`image_grid` applies by default to ``height x width`` images.

    >>> grid_scale(32, 32), grid_scale(8, 8), grid_scale(224, 224)
    (3, 12, 1)
    """
    return max(1, GRID_MIN_CELL_PX // max(height, width))


def image_grid(
    images: Any, titles: Sequence[str] | None = None, ncols: int = 8, scale: int | None = None
) -> np.ndarray:
    """Images side by side, ``ncols`` to a row, each with its title (lines split on ``\\n``) below.

    ``images`` is uint8 ``(N, C, H, W)`` with 1 (grey) or 3 (RGB) channels, a NumPy array or a
    CPU tensor. Each image is enlarged ``scale`` times (default :func:`grid_scale`). With
    ``cols = min(ncols, N)``, ``rows = ceil(N / cols)`` and ``L`` the most title lines, the
    result is ``(rows * (H * scale + L * TITLE_LINE_PX) + (rows + 1) * GRID_PAD_PX,
    cols * W * scale + (cols + 1) * GRID_PAD_PX, 3)`` uint8, white between cells.

    >>> image_grid(np.zeros((5, 1, 8, 8), np.uint8), ["a"] * 5, ncols=4, scale=2).shape
    (66, 74, 3)
    """
    array = _as_uint8_nchw(images)
    n, channels, h, w = array.shape
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    scale = grid_scale(h, w) if scale is None else scale
    lines = max(t.count("\n") + 1 for t in titles) if titles else 0
    cols = min(ncols, n)
    rows = math.ceil(n / cols)
    cell_w, image_h = w * scale, h * scale
    cell_h = image_h + lines * TITLE_LINE_PX
    canvas = np.full(
        (rows * cell_h + (rows + 1) * GRID_PAD_PX, cols * cell_w + (cols + 1) * GRID_PAD_PX, 3), 255, np.uint8
    )
    hwc = array.transpose(0, 2, 3, 1)
    if channels == 1:
        hwc = np.repeat(hwc, 3, axis=3)
    enlarged = hwc.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        row, col = divmod(i, cols)
        y, x = GRID_PAD_PX + row * (cell_h + GRID_PAD_PX), GRID_PAD_PX + col * (cell_w + GRID_PAD_PX)
        canvas[y : y + image_h, x : x + cell_w] = enlarged[i]
        if titles:
            canvas[y + image_h : y + cell_h, x : x + cell_w] = _title_band(titles[i], cell_w, lines)
    return canvas


def rank_within_class(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """For each label, how many earlier labels are of the same class.

    >>> rank_within_class([2, 0, 2, 2, 0]).tolist()
    [0, 0, 1, 2, 1]
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    grouped = labels[order]
    ranks = np.empty_like(labels)
    # A label's first position among the grouped labels is where its class begins.
    ranks[order] = np.arange(len(labels)) - np.searchsorted(grouped, grouped)
    return ranks


def spread_over_classes(true: Sequence[int] | np.ndarray, count: int) -> np.ndarray:
    """Which images a grid of mistakes shows: up to ``count`` positions in ``true`` (the true
    classes of misclassified images, in the order met), taken round-robin over the classes (the
    first of each class, then the second...) and returned grouped by class.

    Taking the first ``count`` would show a single class when the data are sorted by class, as
    CIFAR-10's test set is.

    >>> spread_over_classes([0, 0, 0, 0, 1, 2, 2], 4).tolist()
    [0, 1, 4, 5]
    """
    true = np.asarray(true, dtype=np.int64)
    if not len(true):
        return np.zeros(0, dtype=np.int64)
    key = rank_within_class(true) * (int(true.max()) + 1) + true
    picked = np.sort(np.argsort(key, kind="stable")[:count])
    return picked[np.argsort(true[picked], kind="stable")]


@lru_cache(maxsize=1024)
def _title_band(title: str, width: int, lines: int) -> np.ndarray:
    # A band of its own, so a title longer than the cell is cut, never spills over. Cached:
    # a grid logged every epoch repeats its titles (class names, class pairs).
    band = Image.new("RGB", (width, lines * TITLE_LINE_PX), "white")
    draw = ImageDraw.Draw(band)
    for j, line in enumerate(title.split("\n")):
        draw.text((1, j * TITLE_LINE_PX), line, fill="black", font=_font())
    return np.asarray(band)


def confusion_cell_px(num_classes: int) -> int:
    """The side of one cell of :func:`confusion_matrix_figure` by default.

    >>> confusion_cell_px(3), confusion_cell_px(10), confusion_cell_px(100)
    (36, 36, 8)
    """
    return max(CM_MIN_CELL_PX, min(CM_MAX_CELL_PX, CM_MAX_CELLS_PX // max(num_classes, 1)))


def confusion_matrix_figure(matrix: Any, classes: Sequence[str], cell: int | None = None) -> np.ndarray:
    """A confusion matrix as an RGB image: rows are true classes, columns predicted ones.

    Each cell shows its count (when the cell is 20 px or more) and is shaded by its share of
    the row, i.e. of that true class, so rare classes read as clearly as common ones. The
    image is square, ``CM_CAPTION_PX + CM_LABEL_PX + n * cell + CM_MARGIN_PX`` on each side,
    with ``cell`` by default :func:`confusion_cell_px`. Class names longer than
    ``CM_LABEL_PX`` are cut.

    >>> confusion_matrix_figure([[3, 1], [0, 4]], ["cat", "dog"]).shape
    (172, 172, 3)
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(f"matrix must be {n}x{n} for {n} classes, got shape {counts.shape}")
    cell = confusion_cell_px(n) if cell is None else cell
    origin = CM_CAPTION_PX + CM_LABEL_PX  # where the cells start, on both axes
    side = origin + n * cell + CM_MARGIN_PX
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    colours = (255 - share[..., None] * (255 - _CM_DARK)).round().astype(np.uint8)
    canvas = np.full((side, side, 3), 255, np.uint8)
    canvas[origin : origin + n * cell, origin : origin + n * cell] = colours.repeat(cell, 0).repeat(cell, 1)
    # Text is blended in as cached coverage masks: drawing ~100 strings with Pillow each time
    # took most of the figure's time.
    black, white = np.zeros(3, np.uint16), np.full(3, 255, np.uint16)
    _paint(canvas, _text_mask("predicted", CM_LABEL_PX, CM_CAPTION_PX), 0, origin, black)
    _paint(canvas, np.rot90(_text_mask("true", CM_LABEL_PX, CM_CAPTION_PX)), origin, 0, black)
    for k, name in enumerate(classes):
        label = _text_mask(name, CM_LABEL_PX, cell)
        _paint(canvas, label, origin + k * cell, CM_CAPTION_PX, black)  # row label, left of row k
        _paint(canvas, np.rot90(label), CM_CAPTION_PX, origin + k * cell, black)  # reads upwards, above column k
    if cell >= 20:
        for i in range(n):
            for j in range(n):
                mask = np.hstack([_glyph(c) for c in str(counts[i, j])])
                y = origin + i * cell + (cell - mask.shape[0]) // 2
                x = origin + j * cell + (cell - mask.shape[1]) // 2
                _paint(canvas, mask, y, x, white if share[i, j] > 0.5 else black)
    return canvas


@lru_cache(maxsize=1024)
def _text_mask(text: str, width: int, height: int) -> np.ndarray:
    """``text`` as a ``(height, width)`` coverage mask, 2 px in, vertically centred; whatever
    does not fit is cut off."""
    strip = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(strip)
    top, bottom = draw.textbbox((0, 0), text, font=_font())[1::2]
    draw.text((2, (height - (bottom - top)) // 2 - top), text, fill=255, font=_font())
    return np.asarray(strip)


@lru_cache(maxsize=64)
def _glyph(char: str) -> np.ndarray:
    """One character's coverage mask, as wide as its advance and as tall as the digits, so
    masks placed side by side spell a number."""
    font = _font()
    top, bottom = font.getbbox("0123456789")[1::2]
    glyph = Image.new("L", (max(1, round(font.getlength(char))), bottom - top), 0)
    ImageDraw.Draw(glyph).text((0, -top), char, fill=255, font=font)
    return np.asarray(glyph)


def _paint(canvas: np.ndarray, mask: np.ndarray, y: int, x: int, colour: np.ndarray) -> None:
    """Blend ``colour`` into ``canvas`` at (``y``, ``x``) where ``mask`` covers it (0-255)."""
    region = canvas[y : y + mask.shape[0], x : x + mask.shape[1]]
    alpha = mask[: region.shape[0], : region.shape[1], None].astype(np.uint16)
    region[:] = (region * (255 - alpha) + colour * alpha + 127) // 255


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """An ``(H, W, 3)`` or ``(H, W)`` uint8 array encoded as PNG (``compress_level`` 1 encodes
    about three times faster than the default 6, for files little bigger)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an image array (from :func:`image_grid`, :func:`confusion_matrix_figure`, ...) as
    a PNG file, atomically: a reader never sees half a file."""
    write_atomic(path, png_bytes(image))
    return Path(path)
