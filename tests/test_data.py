"""ignite_mlp.data: sources, cache, label checks and the in-memory loader."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_cifar_pickles, make_tarball, make_tree
from PIL import Image
from torchvision import transforms

from ignite_mlp.data import Dataset, TensorLoader, check_labels, load, load_dataset, normalization, sources, summarize
from ignite_mlp.errors import UserError


def _pil_tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)


def test_tree_decodes_to_the_pixels_on_disk(tree: Path) -> None:
    ds = load_dataset(tree)
    assert ds.classes == list(CLASSES)
    assert ds.train_images.shape == (36, 3, 8, 8) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (12, 3, 8, 8)
    # Sorted by class then file name: image 13 is bee/0001.png, label 1.
    assert torch.equal(ds.train_images[13], _pil_tensor(tree / "train" / "bee" / "0001.png"))
    assert ds.train_labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert ds.in_features == 192 and ds.num_classes == 3


def test_tarball_equals_tree(tree: Path, tarball: Path) -> None:
    a, b = load_dataset(tree), load_dataset(tarball)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert a.classes == b.classes


def test_second_load_uses_cache_and_changed_source_invalidates(
    tarball: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(tarball)
    calls = []
    real_read = load.read_source
    monkeypatch.setattr(load, "read_source", lambda *a: calls.append(a) or real_read(*a))
    second = load_dataset(tarball)
    assert calls == [], "second load must not decode again"
    assert torch.equal(first.train_images, second.train_images)
    # Change the source: one more test image, the tarball rewritten.
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tree / "test" / "ant" / "9999.png")
    make_tarball(tree, tarball)
    third = load_dataset(tarball)
    assert len(calls) == 1 and len(third.test_labels) == 13


def test_cifar_pickles_folder(tmp_path: Path) -> None:
    folder = make_cifar_pickles(tmp_path / "data")
    ds = load_dataset(tmp_path / "data")
    assert ds.train_images.shape == (30, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    import pickle

    with open(folder / "data_batch_2", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    # Row 0 of batch 2 is sample 6: the flat 3072 values are channel-major (R plane, G, B).
    assert torch.equal(ds.train_images[6].flatten(), torch.from_numpy(entry[b"data"][0]))
    assert ds.train_labels[6].item() == entry[b"labels"][0]


def _official_archive(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    make_cifar_pickles(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_fetches_checks_and_reads_in_place(
    tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _official_archive(tmp_path)
    # torchvision verifies the official MD5; our fake archive has its own, so point both at it.
    monkeypatch.setattr(sources, "CIFAR10_URL", f"{serve}/{archive.name}")
    monkeypatch.setattr(sources, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = load_dataset(tmp_path / "fresh")
    # The archive is kept as downloaded (byte for byte) and read in place: nothing unpacked.
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == ["cifar-10-python.tar.gz"]
    assert (tmp_path / "fresh" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert len(ds.train_labels) == 30


def test_download_with_wrong_checksum_is_refused(tmp_path: Path, serve: str, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _official_archive(tmp_path)
    monkeypatch.setattr(sources, "CIFAR10_URL", f"{serve}/{archive.name}")
    with pytest.raises(UserError, match="could not download"):
        load_dataset(tmp_path / "fresh")  # the real MD5 does not match the fake archive


def test_offline_download_says_how_to_use_a_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    with pytest.raises(UserError, match="point --data at a local copy"):
        load_dataset(tmp_path / "empty")


def test_official_archive_in_folder_is_unpacked(tmp_path: Path) -> None:
    archive = _official_archive(tmp_path)
    assert len(load_dataset(archive).test_labels) == 6


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "truncated image"),
        ("empty_class", "holds no images"),
        ("mismatch", "different classes"),
        ("other_shape", "differs from"),
    ],
)
def test_bad_trees_name_the_problem(tmp_path: Path, damage: str, message: str) -> None:
    tree = make_tree(tmp_path / "t")
    victim = tree / "train" / "bee" / "0003.png"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "empty_class":
        for f in (tree / "test" / "cat").iterdir():
            f.unlink()
    elif damage == "mismatch":
        (tree / "test" / "cat").rename(tree / "test" / "dog")
    else:
        Image.new("RGB", (9, 9)).save(victim)
    with pytest.raises(UserError, match=message) as info:
        load_dataset(tree)
    if damage in ("truncate", "other_shape"):
        assert "0003.png" in str(info.value)


def test_not_a_tarball_and_missing_paths(tmp_path: Path) -> None:
    bogus = tmp_path / "x.tar.gz"
    bogus.write_text("hello")
    with pytest.raises(UserError, match="not a gzip tarball"):
        load_dataset(bogus)
    with pytest.raises(UserError, match="no such file"):
        load_dataset(tmp_path / "missing.tar.gz")
    with pytest.raises(UserError, match="downloading is off"):
        load_dataset(tmp_path / "nothing", download=False)


def test_labels_are_checked_against_class_count() -> None:
    check_labels(torch.tensor([0, 1, 2]), 3, "train")
    with pytest.raises(UserError, match=r"\[0, 2\].*found 3"):
        check_labels(torch.tensor([0, 3]), 3, "train")
    with pytest.raises(UserError, match="found -1"):
        check_labels(torch.tensor([-1, 0]), 3, "test")


def test_batches_equal_the_tutorials_transforms(tree: Path) -> None:
    ds = load_dataset(tree)
    loader = TensorLoader(ds.test_images, ds.test_labels, batch_size=5, mean=[0.5], std=[0.5])
    tutorial = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    files = [tree / "test" / c / f"{i:04d}.png" for c in CLASSES for i in range(4)]
    expected = torch.stack([tutorial(Image.open(f)) for f in files])
    got = torch.cat([x for x, _ in loader])  # fresh tensors (no buffers): safe to keep
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert got.min() >= -1 - 1e-6 and got.max() <= 1 + 1e-6  # [-1, 1], up to float rounding


def test_per_channel_normalisation_matches_formula() -> None:
    images = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    x, _ = next(iter(TensorLoader(images, torch.zeros(4, dtype=torch.long), 4, mean, std)))
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="3 channels"):
        normalization([0.5, 0.5], [0.5], 3)


def test_recycled_buffers_give_the_same_batches() -> None:
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(50)
    plain = TensorLoader(images, labels, 8, [0.5], [0.5], shuffle=True, seed=3)
    ring = TensorLoader(images, labels, 8, [0.5], [0.5], shuffle=True, seed=3, buffers=3)
    kept = []
    for (a, ya), (b, yb) in zip(plain, ring, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
        kept.append(b)
    # Only the last 3 batches survive in the ring: the 4th from last was overwritten.
    assert kept[-1].data_ptr() == kept[-4].data_ptr()


def test_kept_normalized_batches_are_served_again() -> None:
    images = torch.randint(0, 256, (20, 1, 2, 2), dtype=torch.uint8)
    loader = TensorLoader(images, torch.arange(20), 8, [0.5], [0.5], keep_normalized=True)
    first = list(loader)
    second = list(loader)
    assert [x.data_ptr() for x, _ in first] == [x.data_ptr() for x, _ in second]  # not recomputed
    fresh = TensorLoader(images, torch.arange(20), 8, [0.5], [0.5])
    for (a, _), (b, _) in zip(second, fresh, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="augment"):
        TensorLoader(images, torch.arange(20), 8, [0.5], [0.5], keep_normalized=True, augment=lambda x, g: x)


def test_kept_normalized_shuffled_batches_equal_normalising_each_batch() -> None:
    images = torch.randint(0, 256, (50, 3, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(50)
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
    kept = TensorLoader(images, labels, 8, mean, std, shuffle=True, seed=5, buffers=3, keep_normalized=True)
    plain = TensorLoader(images, labels, 8, mean, std, shuffle=True, seed=5)
    for epoch in (1, 2):
        kept.set_epoch(epoch)
        plain.set_epoch(epoch)
        for (a, ya), (b, yb) in zip(kept, plain, strict=True):
            # Bit for bit: the same arithmetic, done once instead of each epoch.
            assert torch.equal(a, b) and torch.equal(ya, yb)
            # And what torchvision's transforms give for the same images.
            to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
            expected = torch.stack([to_tensor(img.permute(1, 2, 0).numpy()) for img in images[ya]])
            assert torch.allclose(a, expected, atol=1e-6)


def test_shuffle_is_fresh_each_epoch_seeded_and_complete() -> None:
    images = torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1)
    labels = torch.arange(100)
    loader = TensorLoader(images, labels, batch_size=32, mean=[0.0], std=[1 / 255], shuffle=True, seed=7)

    def order(epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    e1, e2 = order(1), order(2)
    assert sorted(e1) == list(range(100)) and sorted(e2) == list(range(100))
    assert e1 != e2 and e1 != list(range(100))
    assert order(1) == e1, "the same (seed, epoch) gives the same order"
    # Images travel with their labels (image value == label here).
    for x, y in loader:
        assert torch.equal(x.flatten().round().long(), y)
    other = TensorLoader(images, labels, batch_size=32, mean=[0.0], std=[1 / 255], shuffle=True, seed=8)
    assert torch.cat([y for _, y in other]).tolist() != order(1)
    assert len(loader) == 4


def test_summary_lists_classes_counts_shape_and_batches(tree: Path) -> None:
    text = summarize(load_dataset(tree), batch_size=10)
    assert "3 classes" in text and "ant 12/4" in text and "3x8x8" in text
    assert "4 batches of 10" in text  # ceil(36 / 10)


def test_dataset_properties_grayscale() -> None:
    ds = Dataset(
        torch.zeros(2, 1, 5, 7, dtype=torch.uint8),
        torch.tensor([0, 1]),
        torch.zeros(1, 1, 5, 7, dtype=torch.uint8),
        torch.tensor([1]),
        ["a", "b"],
        "mem",
    )
    assert ds.in_features == 35 and ds.image_shape == (1, 5, 7)


def test_channel_stats_match_a_direct_computation() -> None:
    from ignite_mlp.data import channel_stats

    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(images, chunk=7)  # chunks that do not divide 50
    pixels = images.double() / 255
    assert mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)


def test_kept_batches_survive_an_engine_that_stops_at_len() -> None:
    import itertools

    images = torch.randint(0, 256, (20, 1, 2, 2), dtype=torch.uint8)
    loader = TensorLoader(images, torch.arange(20), 8, [0.5], [0.5], keep_normalized=True)
    first = list(itertools.islice(loader, len(loader)))  # like Ignite: never asks past the last batch
    again = list(itertools.islice(loader, len(loader)))
    assert [x.data_ptr() for x, _ in first] == [x.data_ptr() for x, _ in again]


def test_a_batch_size_beyond_the_data_sizes_no_buffer_by_it() -> None:
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    huge = TensorLoader(images, torch.arange(5), 10**20, [0.0], [1 / 255], shuffle=True, buffers=3)
    ((x, y),) = list(huge)  # one batch of everything (the buffers used to be sized by 10**20)
    assert sorted(y.tolist()) == [0, 1, 2, 3, 4] and torch.equal(x, images[y].float())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2])
def test_batches_streamed_from_the_host_equal_resident_ones(shuffle: bool, world_size: int) -> None:
    """Data too large for the GPU stays in the mapped file and each batch is copied over:
    the same batches, in the same order, as from a resident copy."""
    images = torch.randint(0, 256, (53, 3, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(53)
    for rank in range(world_size):
        common = dict(shuffle=shuffle, seed=4, buffers=3, rank=rank, world_size=world_size)
        resident = TensorLoader(images, labels, 8, [0.5], [0.5], resident=True, **common)
        streamed = TensorLoader(images, labels, 8, [0.5], [0.5], resident=False, keep_normalized=True, **common)
        assert not streamed.keep_normalized  # a float copy of data that does not fit would fit less
        for epoch in (1, 2):
            resident.set_epoch(epoch)
            streamed.set_epoch(epoch)
            for (a, ya), (b, yb) in zip(resident, streamed, strict=True):
                assert torch.equal(a, b) and torch.equal(ya, yb)


def test_images_stay_resident_when_they_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from ignite_mlp.data import loader

    assert loader.fits_on_device(10**15, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    cuda = torch.device("cuda")
    assert loader.fits_on_device(500, cuda) and not loader.fits_on_device(501, cuda)
