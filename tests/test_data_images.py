"""ignite_mlp.data.images and .parallel: walking sources, decoding images, on every core."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tarball, make_tree
from PIL import Image

from ignite_mlp.data import images, load_dataset
from ignite_mlp.data.images import decode_array
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
