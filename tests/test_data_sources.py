"""ignite_mlp.data.sources: CIFAR-10 pickles cannot run code, archives are read where they lie."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Payload, make_cifar_pickles

from ignite_mlp.data import load_dataset, sources
from ignite_mlp.errors import UserError


def _archive(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_a_crafted_batch_is_refused_and_its_payload_never_runs(tmp_path: Path, packed: bool) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    marker = tmp_path / "PWNED"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)
    source = _archive(folder, tmp_path / "c.tar.gz") if packed else tmp_path / "data"
    with pytest.raises(UserError, match=r"data_batch_1: not a CIFAR-10 batch, refused \(it asks for io.open") as e:
        load_dataset(source)
    assert not marker.exists()
    assert "\n" not in str(e.value)


def test_python2_style_batches_still_load(tmp_path: Path) -> None:
    """The official files are Python 2 pickles (protocol 2): numpy's _reconstruct, dtype, lists."""
    folder = make_cifar_pickles(tmp_path / "data")
    entry = {b"batch_label": b"x", b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 4]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(entry, protocol=2))
    ds = load_dataset(tmp_path / "data")
    assert torch.equal(ds.train_images[12:14].reshape(2, -1), torch.from_numpy(entry[b"data"]))
    assert ds.train_labels[12:14].tolist() == [3, 4]


def test_official_archive_is_read_in_place_writing_nothing_beside_it(tmp_path: Path) -> None:
    folder = make_cifar_pickles(tmp_path / "src")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    archive = _archive(folder, shelf / "cifar-10-python.tar.gz")
    from_archive = load_dataset(archive)
    from_shelf = load_dataset(shelf)  # a data folder holding the archive
    assert [p.name for p in shelf.iterdir()] == ["cifar-10-python.tar.gz"]
    from_folder = load_dataset(folder)
    for ds in (from_archive, from_shelf):
        assert torch.equal(ds.train_images, from_folder.train_images)
        assert torch.equal(ds.test_labels, from_folder.test_labels) and ds.classes == from_folder.classes


def test_an_archive_member_larger_than_any_batch_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _archive(make_cifar_pickles(tmp_path / "src"), tmp_path / "c.tar.gz")
    monkeypatch.setattr(sources, "MAX_PICKLE_BYTES", 1000)  # the tiny batches are ~20 KB
    with pytest.raises(UserError, match=r"c.tar.gz:cifar-10-batches-py/.*declares \d+ bytes"):
        load_dataset(archive)


def test_a_failed_download_leaves_nothing_that_looks_finished(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _archive(make_cifar_pickles(tmp_path / "src"), tmp_path / "served.tar.gz")
    monkeypatch.setattr(sources, "CIFAR10_URL", f"{serve}/{archive.name}")
    monkeypatch.setattr(sources, "CIFAR10_MD5", hashlib.md5(b"another file").hexdigest())
    with pytest.raises(UserError, match="could not download"):
        load_dataset(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # nor an empty folder where the data should be
    # So the next start offline says there is nothing, instead of reading a corrupt archive.
    with pytest.raises(UserError, match="downloading is off"):
        load_dataset(tmp_path / "fresh", download=False)


def test_an_offline_download_leaves_no_folder_behind(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "CIFAR10_URL", f"{serve}/no-such-archive.tar.gz")  # answered 404
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(UserError, match="could not download CIFAR-10 into"):
        load_dataset(kept / "a" / "b")
    assert list(kept.iterdir()) == []  # a/ and a/b/ were made for the download, and removed
    with pytest.raises(UserError, match="could not download"):
        load_dataset(kept)
    assert kept.is_dir()  # the user's own folder stays


def _batch(folder: Path, name: str, data: object, labels: object) -> None:
    with open(folder / name, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)


_PIXELS = np.zeros((2, 3072), np.uint8)


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (np.full((2, 3072), 0.5), r"pixels are float64 \(0.5 to 0.5\)"),
        (np.full((2, 3072), 0.5, np.float32), r"pixels are float32 \(0.5 to 0.5\)"),
        (np.full((2, 3072), np.nan), r"pixels are float64 \(no finite value, NaN or infinite among them\)"),
        (
            np.where(np.arange(6144) == 7, np.nan, 1.0).reshape(2, 3072),
            r"pixels are float64 \(1 to 1, NaN or infinite among them\)",
        ),
        (np.full((2, 3072), -3, np.int16), r"pixels are int16 from -3 to -3"),
        (np.full((2, 3072), 256, np.int64), r"pixels are int64 from 256 to 256"),
        ([[300] * 3072, [0] * 3072], r"pixels are int64 from 0 to 300"),
        ([[10**30] * 3072, [0] * 3072], r"pixels are object"),
        (np.full((2, 3072), True), r"pixels are bool"),
    ],
)
def test_batch_pixels_other_than_8_bit_integers_are_one_line_naming_the_file(
    tmp_path: Path, data: object, found: str
) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    _batch(folder, "data_batch_2", data, [0, 1])
    with pytest.raises(UserError, match=rf"data_batch_2: {found}.*not 8-bit integers 0..255") as e:
        load_dataset(tmp_path / "data")
    assert "\n" not in str(e.value)


def test_integer_pixels_within_0_255_are_read_exactly(tmp_path: Path) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    pixels = np.arange(2 * 3072).reshape(2, 3072) % 256  # int64, each value 0..255
    _batch(folder, "test_batch", pixels.tolist(), np.array([9, 0]))
    ds = load_dataset(tmp_path / "data")
    assert torch.equal(ds.test_images.reshape(2, -1), torch.from_numpy(pixels.astype(np.uint8)))
    assert ds.test_labels.tolist() == [9, 0]


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        ([0, 10**30], r"label 1000000000000000000000000000000 \(position 1\)"),
        ([0, 10], r"label 10 \(position 1\)"),
        ([-1, 0], r"label -1 \(position 0\)"),
        ([0, 2.0], r"label 2.0 \(position 1\)"),
        (np.array([0.0, 1.0]), r"label 0.0 \(position 0\)"),
        ([0, "1"], r"label '1' \(position 1\)"),
        ([0, 2**100000], r"label \(an integer of 100001 bits\) \(position 1\)"),
    ],
)
def test_labels_other_than_class_indices_are_one_line_naming_the_file(
    tmp_path: Path, labels: object, shown: str
) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    _batch(folder, "data_batch_4", _PIXELS, labels)
    with pytest.raises(UserError, match=rf"data_batch_4: {shown} is not a class index 0..9; ") as e:
        load_dataset(tmp_path / "data")
    assert "\n" not in str(e.value)


def test_a_batch_with_more_labels_than_images_is_one_line(tmp_path: Path) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    _batch(folder, "data_batch_5", _PIXELS, [1, 2, 3])
    with pytest.raises(UserError, match=r"data_batch_5: 2 images but 3 labels"):
        load_dataset(tmp_path / "data")


@pytest.mark.parametrize("packed", [False, True])
def test_a_huge_label_is_exit_2_and_one_line_through_the_cli(
    tmp_path: Path, packed: bool, capsys: pytest.CaptureFixture
) -> None:
    from ignite_mlp.cli import main

    folder = make_cifar_pickles(tmp_path / "data")
    _batch(folder, "data_batch_1", _PIXELS, [10**30, 0])
    source = _archive(folder, tmp_path / "c.tar.gz") if packed else tmp_path / "data"
    assert main(["samples", "--data", str(source), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "data_batch_1: label 1000000000000000000000000000000 (position 0) is not a class index 0..9" in err
    assert not (tmp_path / "s.png").exists()
