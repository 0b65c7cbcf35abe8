"""ignite_mlp.data.sources: CIFAR-10 pickles cannot run code, archives are read where they lie."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cifar_pickles

from ignite_mlp.data import load_dataset, sources
from ignite_mlp.errors import UserError


class _Payload:
    """Unpickling this creates a file: what a crafted CIFAR-10 batch could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _archive(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_a_crafted_batch_is_refused_and_its_payload_never_runs(tmp_path: Path, packed: bool) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    marker = tmp_path / "PWNED"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
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
