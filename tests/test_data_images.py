"""ignite_mlp.data.images and .parallel: walking sources, decoding images, on every core."""

from __future__ import annotations

import colorsys
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import decode_array, make_tarball, make_tree
from PIL import Image

from ignite_mlp.data import images, load_dataset
from ignite_mlp.data.parallel import read_class_folders
from ignite_mlp.errors import UserError


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` RGB pixels (no pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _jpeg_tree(root: Path, n: int = 7) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.jpg", quality=90)
    return root


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "RGBA"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decoded_pixels_equal_pillows(mode: str, fmt: str) -> None:
    if (fmt, mode) in (("JPEG", "P"), ("JPEG", "RGBA"), ("PNG", "CMYK")):
        pytest.skip(f"{fmt} cannot hold {mode}")
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    with Image.open(io.BytesIO(buffer.getvalue())) as reference:
        expected = np.asarray(reference if reference.mode in ("L", "RGB", "RGBA") else reference.convert("RGB"))
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    got = decode_array(buffer.getvalue(), "x")
    assert got.dtype == np.uint8 and np.array_equal(got, expected)


def test_macos_metadata_files_are_skipped_in_trees_as_in_tarballs(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    clean = load_dataset(tree)
    (tree / "train" / "ant" / "._0001.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    dirty = load_dataset(tree, cache_dir=tmp_path / "c1")
    packed = load_dataset(make_tarball(tree, tmp_path / "t.tar.gz"), cache_dir=tmp_path / "c2")
    for ds in (dirty, packed):
        assert torch.equal(ds.train_images, clean.train_images) and torch.equal(ds.train_labels, clean.train_labels)


@pytest.mark.parametrize("packed", [False, True])
def test_a_file_over_the_size_cap_is_one_line_naming_it(
    tmp_path: Path, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "train" / "bee" / "0002.png").write_bytes(b"\x89PNG" + bytes(5000))
    source = make_tarball(tree, tmp_path / "t.tar.gz") if packed else tree
    monkeypatch.setenv("IGNITE_MLP_MAX_MEMBER_BYTES", "4096")  # the real images are ~250 bytes
    with pytest.raises(UserError, match=r"bee/0002.png: 5004 bytes, more than") as e:
        load_dataset(source)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("packed", [False, True])
def test_an_image_declaring_40000x40000_pixels_is_one_line_naming_it(tmp_path: Path, packed: bool) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "test" / "cat" / "0001.png").write_bytes(_png_declaring(40000, 40000))
    source = make_tarball(tree, tmp_path / "t.tar.gz") if packed else tree
    with pytest.raises(UserError, match=r"cat/0001.png: Image size \(1600000000 pixels\) exceeds limit") as e:
        load_dataset(source)
    assert "\n" not in str(e.value)


def test_jpeg_header_reads_the_frame_size() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (13, 5)).save(buffer, "JPEG", progressive=True)
    assert images.jpeg_header(buffer.getvalue()) == (5, 13, 3)
    assert images.jpeg_header(b"\xff\xd8\xff\xe0\x00") is None  # cut off before the frame


@pytest.mark.parametrize("packed", [False, True])
def test_parallel_decoding_equals_the_serial_decoder(
    tmp_path: Path, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ignite_mlp.data import parallel

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from reference_decoder import read_class_folders_serial  # the oracle: plain Pillow, one file at a time

    monkeypatch.setattr(parallel, "CHUNK", 3)  # 10 chunks: 2 decoded here, 8 by the pool
    tree = _jpeg_tree(tmp_path / "t")
    kind, source = ("tarball", make_tarball(tree, tmp_path / "t.tar.gz")) if packed else ("tree", tree)
    serial = read_class_folders_serial(source, kind)
    for workers in (1, 3):
        ds = read_class_folders(source, kind, workers=workers).to_dataset(str(source))
        assert torch.equal(ds.train_images, serial.train_images) and torch.equal(ds.test_images, serial.test_images)
        assert torch.equal(ds.train_labels, serial.train_labels) and ds.classes == serial.classes


def test_parallel_decoding_names_a_bad_file_from_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ignite_mlp.data import parallel

    monkeypatch.setattr(parallel, "CHUNK", 3)  # several chunks, so the bad one is in a worker
    tree = _jpeg_tree(tmp_path / "t")
    victim = tree / "train" / "b" / "005.jpg"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(UserError, match=r"b/005.jpg: corrupt or truncated image"):
        read_class_folders(tree, "tree", workers=2)
    Image.new("RGB", (9, 8)).save(victim)
    with pytest.raises(UserError, match=r"b/005.jpg: image shape \(3, 8, 9\) differs from \(3, 8, 8\)"):
        read_class_folders(tree, "tree", workers=2)


# ---------------------------------------------------------------------------- every mode by its real range


def _chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _round(values: np.ndarray) -> np.ndarray:
    return np.floor(values + 0.5).clip(0, 255).astype(np.uint8)


def _lab_by_hand(lab: np.ndarray) -> np.ndarray:
    """CIELAB as Pillow and TIFF store it (L 0..255 for 0..100; a and b signed bytes) to sRGB, with
    the D50 white of ICC profiles and Bradford's D50-adapted sRGB matrix (Lindbloom's tables)."""
    signed = lab.view(np.int8).astype(float)
    lightness, a, b = lab[..., 0].astype(float) * 100 / 255, signed[..., 1], signed[..., 2]
    fy = (lightness + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.9642, 1.0, 0.8249])
    to_rgb = np.array(
        [[3.1338561, -1.6168667, -0.4906146], [-0.9787684, 1.9161415, 0.0334540], [0.0719453, -0.2289914, 1.4052427]]
    )
    linear = (xyz @ to_rgb.T).clip(0, 1)
    return _round(255 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055))


def _mode_case(mode: str) -> tuple[Image.Image, str | None, np.ndarray, int]:
    """(image, the format that stores it or None, the expected uint8 (C, H, W) by hand, tolerance).

    A tolerance of 1 or 2 levels is for Pillow's fixed-point colour arithmetic (YCbCr, HSV) and
    Little CMS's 8-bit Lab tables; the rest must match exactly.
    """
    gray = np.array([[0, 17, 128], [200, 254, 255]], np.uint8)
    rgb = np.array(
        [[[0, 0, 0], [255, 255, 255], [250, 10, 20]], [[10, 200, 30], [30, 40, 220], [90, 91, 92]]], np.uint8
    )
    alpha = np.array([[255, 0, 128], [1, 254, 77]], np.uint8)
    if mode == "1":
        bits = gray > 100
        return Image.fromarray(bits), "PNG", _chw(np.stack([np.where(bits, 255, 0).astype(np.uint8)] * 3, -1)), 0
    if mode == "L":
        return Image.fromarray(gray), "PNG", _chw(gray), 0
    if mode == "LA":  # alpha dropped
        return Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG", _chw(np.stack([gray] * 3, -1)), 0
    if mode in ("P", "PA"):
        palette = np.arange(768).reshape(256, 3) * 7 % 256
        indices = np.array([[0, 3, 200], [17, 255, 1]], np.uint8)
        image = Image.fromarray(indices, "P") if mode == "P" else Image.fromarray(np.dstack([indices, alpha]), "PA")
        image.putpalette(palette.astype(np.uint8).tobytes())
        return image, "PNG" if mode == "P" else "TIFF", _chw(palette[indices].astype(np.uint8)), 0
    if mode == "RGB":
        return Image.fromarray(rgb), "PNG", _chw(rgb), 0
    if mode == "RGBA":  # a data set's RGBA keeps its alpha as a fourth channel
        rgba = np.dstack([rgb, alpha])
        return Image.fromarray(rgba), "PNG", _chw(rgba), 0
    if mode == "CMYK":
        cmyk = np.dstack([rgb, alpha])
        expected = (255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255
        return Image.fromarray(cmyk, "CMYK"), "TIFF", _chw(_round(expected)), 0
    if mode in ("I", "I-narrow"):  # 32-bit: its own min..max when it leaves 0..255, else as it is
        values = np.array([[-1000, 0, 1000], [3000, 70000, -500]], np.int32) if mode == "I" else gray.astype(np.int32)
        expected = _round((values + 1000) * 255 / 71000) if mode == "I" else gray
        return Image.fromarray(values), "TIFF", _chw(np.stack([expected] * 3, -1)), 0
    if mode == "I;16":  # by 0..65535: 257 per 8-bit level
        values = np.array([[0, 257, 128 * 257 + 128], [1000, 65534, 65535]], np.uint16)
        return Image.fromarray(values), "PNG", _chw(np.stack([_round(values / 257)] * 3, -1)), 0
    if mode in ("F", "F-wide"):  # by 0..1 when it lies there (not clipped to black), else by its min..max
        if mode == "F":
            values = np.array([[0.0, 0.1, 0.5], [0.25, 0.999, 1.0]], np.float32)
            expected = _round(values.astype(float) * 255)
        else:
            values = np.array([[-2.0, 0.0, 0.5], [3.0, 10.0, 6.0]], np.float32)
            expected = _round((values.astype(float) + 2) * 255 / 12)
        return Image.fromarray(values), "TIFF", _chw(np.stack([expected] * 3, -1)), 0
    if mode == "YCbCr":  # JPEG's full-range equations
        y, cb, cr = (rgb[..., i].astype(float) for i in range(3))
        expected = np.stack(
            [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1
        )
        return Image.fromarray(rgb, "YCbCr"), "TIFF", _chw(_round(expected)), 1
    if mode == "LAB":
        lab = np.array(
            [[[255, 0, 0], [0, 0, 0], [128, 0, 0]], [[140, 20, 236], [120, 240, 30], [200, 10, 20]]],
            np.uint8,
        )
        return Image.fromarray(lab, "LAB"), "TIFF", _chw(_lab_by_hand(lab)), 2
    if mode == "HSV":  # no file format holds HSV: the mapping is given the image itself
        expected = np.array([[colorsys.hsv_to_rgb(*(v / 255 for v in pixel)) for pixel in row] for row in rgb]) * 255
        return Image.fromarray(rgb, "HSV"), None, _chw(_round(expected)), 1
    raise AssertionError(mode)


MODES = [
    "1",
    "L",
    "LA",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "CMYK",
    "I",
    "I-narrow",
    "I;16",
    "F",
    "F-wide",
    "YCbCr",
    "LAB",
    "HSV",
]


def decode_mode_case(mode: str, folder: Path) -> tuple[Image.Image, Path | None, np.ndarray, int]:
    """The case's image saved in ``folder`` (its path, None for HSV), the expectation, the tolerance."""
    image, fmt, expected, tolerance = _mode_case(mode)
    if fmt is None:
        return image, None, expected, tolerance
    path = folder / f"{mode.replace(';', '_')}.{'png' if fmt == 'PNG' else 'tif'}"
    image.save(path, fmt)
    with Image.open(path) as saved:  # the file holds the mode itself, not a conversion of it
        assert saved.mode == image.mode
    return image, path, expected, tolerance


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_mapped_to_0_255_by_its_real_range(mode: str, tmp_path: Path) -> None:
    image, path, expected, tolerance = decode_mode_case(mode, tmp_path)
    if path is None:
        got = np.asarray(images.to_8_bit(image, "x"))
        got = got[None] if got.ndim == 2 else got.transpose(2, 0, 1)
    else:
        got = decode_array(path.read_bytes(), str(path))
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_image_with_nan_or_infinite_pixels_is_one_line_naming_it(tmp_path: Path, bad: float) -> None:
    tree = make_tree(tmp_path / "t")
    values = np.full((8, 8), 0.5, np.float32)
    values[3, 4] = bad
    Image.fromarray(values).save(tree / "train" / "bee" / "0002.tif")
    with pytest.raises(UserError, match=r"bee/0002.tif: float image with NaN or infinite pixels") as e:
        load_dataset(tree)
    assert "\n" not in str(e.value)


def test_a_tree_of_float_tiffs_in_0_1_is_not_black(tmp_path: Path) -> None:
    """The reported case end to end: float TIFFs in [0, 1] through the pool and the cache."""
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "t" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.random((4, 5), dtype=np.float32)).save(tmp_path / "t" / split / cls / f"{i}.tif")
    ds = load_dataset(tmp_path / "t")
    first = np.asarray(Image.open(tmp_path / "t" / "train" / "a" / "0.tif"), dtype=np.float64)
    assert ds.train_images.shape == (6, 3, 4, 5)
    assert np.array_equal(ds.train_images[0, 0].numpy(), np.floor(first * 255 + 0.5).astype(np.uint8))


def test_a_palette_with_transparency_keeps_its_colours_and_warns_nothing(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), "P")
    image.putpalette(bytes(range(12)) + bytes(756))
    image.save(tmp_path / "p.png", transparency=bytes([0, 128, 255, 255]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode_array((tmp_path / "p.png").read_bytes(), "p.png")
    expected = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)  # index i is (3i, 3i + 1, 3i + 2)
    assert np.array_equal(got, expected.transpose(2, 0, 1))
