"""ignite_mlp.data.cache and .load: one memory-mapped file per source, shared, locked, checked."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tree

from ignite_mlp.data import Dataset, load, load_dataset
from ignite_mlp.data.cache import SUFFIX, DataFileWriter, Decoded, DecodedSplit, open_data_file, write_data_file
from ignite_mlp.errors import UserError


def _entry(cache: Path) -> Path:
    (entry,) = cache.glob(f"*{SUFFIX}")
    return entry


def _assert_same(a: Dataset, b: Dataset) -> None:
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.classes == b.classes


def test_a_data_file_round_trips_and_is_mapped_from_disk(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, 2, 3, 4), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 2, 3, 4), dtype=np.uint8)
    # Chunks in decode order, and the row each output position takes.
    rows = np.array([3, 0, 9, 1, 2, 4, 5, 6, 7, 8])
    decoded = Decoded(
        ["x", "y"],
        DecodedSplit([train[:4], train[4:]], np.arange(10) % 2, rows),
        DecodedSplit([test], np.array([1, 1, 0, 0])),
    )
    path = write_data_file(tmp_path / f"d{SUFFIX}", decoded)
    ds = open_data_file(path)
    assert torch.equal(ds.train_images, torch.from_numpy(train[rows])) and torch.equal(
        ds.test_images, torch.from_numpy(test)
    )
    assert ds.train_labels.tolist() == (np.arange(10) % 2).tolist() and ds.train_labels.dtype == torch.int64
    assert ds.classes == ["x", "y"] and not (tmp_path / f"d{SUFFIX}.partial").exists()
    if sys.platform == "linux":  # the tensors are views of the file, not copies in this process
        assert str(path) in Path("/proc/self/maps").read_text()
    ds.train_images[0] += 1  # copy-on-write: this process's page changes, the file does not
    assert torch.equal(open_data_file(path).train_images, torch.from_numpy(train[rows]))


def test_two_loads_started_together_decode_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "t")
    calls = []
    real_read = load.read_source

    def slow_read(*args: object) -> object:
        calls.append(args)
        time.sleep(0.5)  # long enough for the other load to arrive while this one decodes
        return real_read(*args)

    monkeypatch.setattr(load, "read_source", slow_read)
    results: list[Dataset] = []
    notes: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_dataset(tree, tmp_path / "c", note=notes.append)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    _assert_same(results[0], results[1])
    assert any("waiting for another process" in n for n in notes)


@pytest.mark.parametrize("damage", ["truncated", "float_images", "shape", "garbage"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    tree = make_tree(tmp_path / "t")
    fresh = load_dataset(tree, tmp_path / "reference")
    load_dataset(tree, tmp_path / "c")
    entry = _entry(tmp_path / "c")
    blob = bytearray(entry.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "garbage":
        blob[:16] = b"x" * 16
    else:
        length = int.from_bytes(blob[16:24], "little")
        header = json.loads(blob[24 : 24 + length])
        if damage == "float_images":
            header["arrays"]["train_images"]["dtype"] = "float32"
        else:
            header["arrays"]["test_images"]["shape"][2] += 1  # not the train images' size
        body = json.dumps(header).encode()
        blob[16 : 24 + length] = len(body).to_bytes(8, "little") + body
    # Damage arrives as a new file (rewriting a mapped file in place would pull the pages from
    # under this process's own mapping: the cache's writer never does that, it renames).
    damaged = entry.with_name("damaged")
    damaged.write_bytes(bytes(blob))
    damaged.replace(entry)
    _assert_same(load_dataset(tree, tmp_path / "c"), fresh)
    _assert_same(open_data_file(entry), fresh)  # and the entry itself is whole again


def test_a_write_cut_short_is_never_taken_for_a_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path / "t")
    expected = load_dataset(tree, tmp_path / "reference")

    def crash(self: DecodedSplit, out: np.ndarray) -> None:
        out[:1] = 7  # part of the images written, then the process dies
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(DecodedSplit, "fill", crash)
        with pytest.raises(KeyboardInterrupt):
            load_dataset(tree, tmp_path / "c")
    assert not list((tmp_path / "c").glob(f"*{SUFFIX}")) and not list((tmp_path / "c").glob("*.partial"))
    # A writer killed outright leaves its partial file: it is ignored and replaced.
    name = _entry(tmp_path / "reference").name
    (tmp_path / "c" / f"{name}.partial").write_bytes((tmp_path / "reference" / name).read_bytes()[:5000])
    _assert_same(load_dataset(tree, tmp_path / "c"), expected)
    assert [p.name for p in (tmp_path / "c").glob(f"*{SUFFIX}*") if p.suffix != ".lock"] == [name]


def test_an_unusable_cache_folder_is_one_note_and_the_data_still_loads(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    expected = load_dataset(tree, tmp_path / "ok")
    (tmp_path / "afile").write_text("x")
    notes: list[str] = []
    _assert_same(load_dataset(tree, tmp_path / "afile" / "cache", note=notes.append), expected)
    assert len(notes) == 1 and "cannot use the decode cache" in notes[0] and "--cache-dir" in notes[0]


def test_a_data_file_is_a_source_of_its_own(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    expected = load_dataset(tree, tmp_path / "c")
    ds = load_dataset(_entry(tmp_path / "c"))
    _assert_same(ds, expected)
    damaged = tmp_path / f"bad{SUFFIX}"
    damaged.write_bytes(_entry(tmp_path / "c").read_bytes()[:-10])
    with pytest.raises(UserError, match="damaged data file"):
        load_dataset(damaged)


def test_the_writer_discards_its_partial_file_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), DataFileWriter(tmp_path / "w.mlpdata", ["a"], (2, 1, 2, 2), (1, 1, 2, 2)):
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_a_cache_that_holds_the_entry_serves_it_even_when_it_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = make_tree(tmp_path / "t")
    expected = load_dataset(tree, tmp_path / "c")
    monkeypatch.setattr(load, "usable_cache_dir", lambda cache, note: note("unusable") or None)  # say read-only
    notes: list[str] = []
    _assert_same(load_dataset(tree, tmp_path / "c", note=notes.append), expected)
    assert notes == []
