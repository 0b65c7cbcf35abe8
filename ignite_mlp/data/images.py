"""Class-folder trees and their tarballs: walking them, and decoding one image file.

Both walkers yield ``(split, class, file name, bytes)`` (bytes ``None`` marks a class folder,
so empty classes are seen too), skip macOS ``._*`` files alike, and keep the limits of
:mod:`ignite_mlp.data.limits`: a file or tar member over the size limit is refused before it is
read (a member's size from its tar header), and so is a source of too many files or bytes.
Decoding refuses an image of too many pixels before allocating it: a small file declaring
40000x40000 pixels is one line naming it, not an exhausted memory.
"""

from __future__ import annotations

import functools
import io
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, UnidentifiedImageError

from ignite_mlp.data.limits import Budget, check_pixels
from ignite_mlp.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
Entry = tuple[str, str, str, bytes | None]


# ---------------------------------------------------------------------------- walking a source


def iter_tree(root: Path) -> Iterator[Entry]:
    """Yield (split, class, file name, bytes) for a folder tree; bytes None marks a class folder."""
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        budget = Budget(str(split_dir))
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            yield split, class_dir.name, "", None
            for file in sorted(class_dir.iterdir()):
                if _is_image_name(file.name) and file.is_file():
                    budget.count()
                    budget.take(file.stat().st_size, str(file))
                    yield split, class_dir.name, file.name, file.read_bytes()


def iter_tarball(path: Path) -> Iterator[Entry]:
    """Same as :func:`iter_tree` for a .tar.gz, streamed without unpacking to disk."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            budget = Budget(str(path))
            for member in tar:
                budget.count()
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if member.isdir() and len(parts) >= 2 and parts[-2] in ("train", "test"):
                    yield parts[-2], parts[-1], "", None
                elif member.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test"):
                    if _is_image_name(parts[-1]):
                        budget.take(member.size, f"{path}:{member.name}")
                        yield parts[-3], parts[-2], parts[-1], tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"--data {path}: damaged or truncated tarball ({e}); download or copy it again") from None


def _is_image_name(name: str) -> bool:
    # macOS writes "._<name>" metadata files beside each file it copies: not images.
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("._")


def where(path: Path, kind: str, split: str, cls: str, name: str) -> str:
    """How messages name one image of a source."""
    return f"{path}:{split}/{cls}/{name}" if kind == "tarball" else str(path / split / cls / name)


# ---------------------------------------------------------------------------- decoding one image


def decode_arrays(items: list[tuple[str, bytes]]) -> list[np.ndarray]:
    """Decode ``(name, bytes)`` image files to uint8 ``(C, H, W)`` arrays; a bad file is a
    UserError naming it.

    Grayscale stays 1 channel, RGBA 4; other modes become RGB, each scaled by its real range
    (:func:`to_8_bit`). Gray and colour
    JPEGs go through torchvision's decoder, all in one call (libjpeg-turbo: the same pixels as
    Pillow's, in about 40% of the time); everything else, and any JPEG it refuses, through Pillow.
    """
    arrays: list[np.ndarray | None] = [None] * len(items)
    jpegs = [i for i, (name, data) in enumerate(items) if _plain_jpeg(data, name)]
    if jpegs:
        decoded = _decode_jpegs([items[i][1] for i in jpegs])
        for i, array in zip(jpegs, decoded or [], strict=False):
            arrays[i] = array
    return [
        array if array is not None else _decode_pil(data, name)
        for array, (name, data) in zip(arrays, items, strict=True)
    ]


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img.width, img.height, name)
            array = np.asarray(to_8_bit(img, name))
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{name}: corrupt image (not a format PIL can read); delete or replace this file") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit, checked as it opens the file
        raise UserError(f"{name}: {str(e).rstrip('.')}; delete or shrink this file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{name}: corrupt or truncated image ({e}); delete or replace this file") from None
    return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


# ---------------------------------------------------------------------------- one image mode to 8 bits

_CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_8_bit(image: Image.Image, name: str, channels: int | None = None) -> Image.Image:
    """``image`` as 8-bit "L", "RGB" or "RGBA", every mode mapped by its real range (docs/data.md).

    With ``channels`` None (a data set's images): "L" stays grey, "RGBA" keeps its alpha, every
    other mode becomes RGB. With ``channels`` 1, 3 or 4 (predict fitting a picture to a run),
    that result is then converted to "L", "RGB" or "RGBA". Alpha is dropped, never composited,
    wherever the result has no alpha channel. 16-bit grey is scaled by 0..65535, 32-bit integer
    grey by its own min..max when it leaves 0..255, float grey by 0..1 when it lies there, else
    by its own min..max; NaN or infinite pixels are a UserError naming ``name``.

    >>> to_8_bit(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "a.tif").getpixel((1, 0))
    (128, 128, 128)
    >>> to_8_bit(Image.fromarray(np.array([[0, 257, 65535]], np.uint16)), "a.png", channels=1).getpixel((1, 0))
    1
    """
    kept = image.mode in _CHANNEL_MODES.values()
    image = _eight_bit(image, name)
    if not kept and image.mode != "RGB":
        image = _convert(image, "RGB", name)
    if channels is not None and channels not in _CHANNEL_MODES:
        raise UserError(f"{name}: pictures have 1, 3 or 4 channels, not the {channels} this run was trained on")
    if channels is not None and image.mode != _CHANNEL_MODES[channels]:
        image = _convert(image, _CHANNEL_MODES[channels], name)
    return image


def _eight_bit(image: Image.Image, name: str) -> Image.Image:
    """Grey of more than 8 bits as 8-bit "L", Lab as sRGB; other modes as they are."""
    if image.mode == "LAB":  # Pillow's own convert does not apply the colour transform
        return ImageCms.applyTransform(image, _lab_to_srgb())  # type: ignore[return-value]
    if image.mode.startswith("I;16"):  # 16-bit grey, whichever byte order
        return Image.fromarray(_scaled(np.asarray(image, dtype=np.float64), 0.0, 65535.0))
    if image.mode == "I":  # 32-bit integer grey
        values = np.asarray(image, dtype=np.float64)
        low, high = _range(values)
        return Image.fromarray(_scaled(values, *((0.0, 255.0) if low >= 0 and high <= 255 else (low, high))))
    if image.mode == "F":  # float grey
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise UserError(f"{name}: float image with NaN or infinite pixels; replace them or remove the file")
        low, high = _range(values)
        return Image.fromarray(_scaled(values, *((0.0, 1.0) if low >= 0 and high <= 1 else (low, high))))
    return image


def _range(values: np.ndarray) -> tuple[float, float]:
    return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped linearly from ``low..high`` to 0..255, rounded half up; a flat image is 0.

    >>> _scaled(np.array([-2.0, 0.0, 2.0]), -2.0, 2.0).tolist()
    [0, 128, 255]
    """
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.floor((values - low) * (255.0 / (high - low)) + 0.5).clip(0, 255).astype(np.uint8)


def _convert(image: Image.Image, mode: str, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow suggests RGBA for a palette with transparency; dropping the alpha is meant here.
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            return image.convert(mode)
    except ValueError as e:  # a mode Pillow reads but cannot convert
        raise UserError(f"{name}: image mode {image.mode} cannot be converted ({e}); save it as RGB") from None


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


def _check_pixels(width: int, height: int, name: str) -> None:
    check_pixels(width, height, name)  # the limit every reader of images shares


def _plain_jpeg(data: bytes, name: str) -> bool:
    """A gray or colour JPEG (not CMYK), of a size allowed here, for torchvision's decoder."""
    header = jpeg_header(data) if data[:3] == b"\xff\xd8\xff" else None
    if header is None or header[2] not in (1, 3):
        return False
    _check_pixels(header[1], header[0], name)
    return True


def _decode_jpegs(files: list[bytes]) -> list[np.ndarray] | None:
    """torchvision's decode of these JPEGs, or None where it cannot (it decodes all or none:
    a damaged file then goes through Pillow, which names the problem)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision without image decoding (deprecated there since 0.29)
        return None
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return [t.numpy() for t in decode_jpeg(tensors, ImageReadMode.UNCHANGED)]
    except RuntimeError:
        return None


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from a JPEG's frame header, or None where there is none.

    >>> jpeg_header(b"\\xff\\xd8\\xff\\xc0\\x00\\x0b\\x08\\x00\\x20\\x00\\x30\\x03")
    (32, 48, 3)
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if i + 10 > len(data):
                return None
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big"), data[i + 9]
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


# ---------------------------------------------------------------------------- classes


def check_classes(path: Path, class_dirs: dict[str, set[str]], counts: dict[str, Counter]) -> list[str]:
    """The sorted class names, once both splits have the same non-empty class folders."""
    for split in ("train", "test"):
        if not class_dirs[split]:
            raise UserError(
                f"--data {path}: no {split}/<class>/ folders found; "
                "the layout is train/<class>/*.jpg and test/<class>/*.jpg"
            )
    if class_dirs["train"] != class_dirs["test"]:
        only_train = sorted(class_dirs["train"] - class_dirs["test"])
        only_test = sorted(class_dirs["test"] - class_dirs["train"])
        raise UserError(
            f"--data {path}: train/ and test/ hold different classes (only in train: {only_train}, "
            f"only in test: {only_test}); both must have the same class folders"
        )
    classes = sorted(class_dirs["train"])
    for split in ("train", "test"):
        empty = [c for c in classes if counts[split][c] == 0]
        if empty:
            raise UserError(
                f"--data {path}: class folder {split}/{empty[0]} holds no images; add images or remove the folder"
            )
    return classes


def shape_mismatch(name: str, shape: tuple[int, ...], first_shape: tuple[int, ...], first_name: str) -> UserError:
    return UserError(
        f"{name}: image shape {shape} differs from {first_shape} of {first_name}; "
        "all images must share one size and channel count (resize or convert them)"
    )
