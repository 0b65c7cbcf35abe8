"""The data file: a decoded data set as one uint8 file, memory-mapped by every process that reads it.

Layout: 16 magic bytes, the header's length (8 bytes, little-endian), a JSON header, then four
arrays, each on a 4096-byte boundary: train images (uint8 ``N, C, H, W``), test images, train
labels (int64), test labels. The header records the classes, every array's dtype, shape and
offset, and the file's size.

Readers map the arrays copy-on-write from a file opened read-only: all processes (the ranks of
a run, consecutive runs) share the page cache's one copy, a process's memory does not grow
with the data set, and nothing a process does can change the file. A writer fills
``<name>.partial`` and renames it only after flushing it to disk, so a file under its final
name is complete; a reader still checks the header against the file (size, dtypes, shapes)
and treats a mismatch as no file at all.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from ignite_mlp.data.dataset import Dataset

MAGIC = b"IGNITE-MLP-DATA1"
SUFFIX = ".mlpdata"
_ALIGN = 4096
_ARRAYS = ("train_images", "test_images", "train_labels", "test_labels")
_DTYPES = {"train_images": "uint8", "test_images": "uint8", "train_labels": "int64", "test_labels": "int64"}


class DataFileError(ValueError):
    """A file that is not a whole, consistent data file."""


# ---------------------------------------------------------------------------- decoded, not yet stored


@dataclass
class DecodedSplit:
    """One split as decoders deliver it: image chunks in the order they were decoded, and for
    each output position the row of the chunks' concatenation it takes (None: in order)."""

    chunks: list[np.ndarray]
    labels: np.ndarray
    rows: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.labels), *self.chunks[0].shape[1:])

    def fill(self, out: np.ndarray) -> None:
        """Write the images into ``out`` in output order, one chunk at a time (no second copy)."""
        if self.rows is None:
            start = 0
            for chunk in self.chunks:
                out[start : start + len(chunk)] = chunk
                start += len(chunk)
            return
        position = np.empty(len(self.rows), dtype=np.int64)
        position[self.rows] = np.arange(len(self.rows))  # where each decoded row goes
        start = 0
        for chunk in self.chunks:
            out[position[start : start + len(chunk)]] = chunk
            start += len(chunk)


@dataclass
class Decoded:
    """A whole source, decoded: class names and both splits."""

    classes: list[str]
    train: DecodedSplit
    test: DecodedSplit

    def to_dataset(self, source: str) -> Dataset:
        """The data set in this process's memory (when there is no cache to write it to)."""
        arrays = []
        for split in (self.train, self.test):
            images = np.empty(split.shape, dtype=np.uint8)
            split.fill(images)
            arrays += [torch.from_numpy(images), torch.from_numpy(split.labels.astype(np.int64))]
        return Dataset(*arrays, classes=list(self.classes), source=source)


# ---------------------------------------------------------------------------- writing


class DataFileWriter:
    """Create a data file of the given shapes; fill ``arrays[name]`` (writable memory maps), then
    :meth:`commit`. Used as a context manager, an exception discards the partial file."""

    def __init__(
        self, path: str | Path, classes: list[str], train_shape: tuple[int, ...], test_shape: tuple[int, ...]
    ) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        header = _layout(classes, tuple(train_shape), tuple(test_shape))
        with open(self.partial, "wb") as f:
            f.write(_encode_header(header))
            f.truncate(header["size"])
            if hasattr(os, "posix_fallocate"):
                # Claim the disk space now: a full disk is then an OSError here, not a SIGBUS
                # when a write through the memory map finds no block to land on.
                os.posix_fallocate(f.fileno(), 0, header["size"])
        self.arrays: dict[str, np.ndarray] = {
            name: _map(self.partial, header["arrays"][name], "r+") for name in _ARRAYS
        }

    def commit(self) -> Path:
        for array in self.arrays.values():
            if isinstance(array, np.memmap):
                array.flush()
        self.arrays = {}
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())  # on disk before it takes the name that says "complete"
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self.arrays = {}
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> DataFileWriter:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.abort()


def write_data_file(path: str | Path, decoded: Decoded) -> Path:
    """Store ``decoded`` as a data file at ``path`` (atomically: complete or absent)."""
    with DataFileWriter(path, decoded.classes, decoded.train.shape, decoded.test.shape) as writer:
        for name, split in (("train", decoded.train), ("test", decoded.test)):
            split.fill(writer.arrays[f"{name}_images"])
            writer.arrays[f"{name}_labels"][:] = split.labels
        return writer.commit()


def _layout(classes: list[str], train_shape: tuple[int, ...], test_shape: tuple[int, ...]) -> dict[str, Any]:
    shapes = {
        "train_images": train_shape,
        "test_images": test_shape,
        "train_labels": train_shape[:1],
        "test_labels": test_shape[:1],
    }
    # The header's own size depends on the offsets it records: reserve a generous page count.
    offset = _ALIGN * (1 + len(json.dumps(classes)) // _ALIGN + 1)
    arrays = {}
    for name in _ARRAYS:
        nbytes = int(np.prod(shapes[name])) * np.dtype(_DTYPES[name]).itemsize
        arrays[name] = {"dtype": _DTYPES[name], "shape": list(shapes[name]), "offset": offset}
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return {"version": 1, "classes": list(classes), "arrays": arrays, "size": offset}


def _encode_header(header: dict[str, Any]) -> bytes:
    body = json.dumps(header).encode()
    blob = MAGIC + len(body).to_bytes(8, "little") + body
    if len(blob) > header["arrays"]["train_images"]["offset"]:
        raise ValueError("data file header larger than its reserved space")
    return blob


# ---------------------------------------------------------------------------- reading


def is_data_file(path: Path) -> bool:
    """Does the file start like a data file?"""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def open_data_file(path: str | Path, source: str = "") -> Dataset:
    """The data set in ``path``, its tensors mapped from the file (see the module docstring).

    Raises ``FileNotFoundError`` when there is no file and :class:`DataFileError` naming what
    is wrong when there is one that is not a whole, consistent data file.
    """
    path = Path(path)
    header = read_header(path)
    tensors = {name: torch.from_numpy(_map(path, header["arrays"][name], "c")) for name in _ARRAYS}
    return Dataset(**tensors, classes=list(header["classes"]), source=source or str(path))


def read_header(path: Path) -> dict[str, Any]:
    """The checked header of a data file (raises as :func:`open_data_file` does)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(len(MAGIC) + 8)
        if len(start) < len(MAGIC) + 8 or start[: len(MAGIC)] != MAGIC:
            raise DataFileError("not an ignite_mlp data file")
        length = int.from_bytes(start[len(MAGIC) :], "little")
        if length > min(size, 2**24):
            raise DataFileError("header length out of range")
        try:
            header = json.loads(f.read(length))
        # ValueError: also an integer of thousands of digits; RecursionError: arrays nested too deep.
        except (ValueError, RecursionError) as e:
            raise DataFileError(f"unreadable header ({type(e).__name__})") from None
    _check_header(header, size)
    return header


def _check_header(header: Any, size: int) -> None:
    try:
        arrays = {name: header["arrays"][name] for name in _ARRAYS}
        classes, declared = header["classes"], header["size"]
        shapes = {name: tuple(_count(n) for n in _list(a["shape"])) for name, a in arrays.items()}
        offsets = {name: _count(a["offset"]) for name, a in arrays.items()}
        dtypes = {name: a["dtype"] for name, a in arrays.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise DataFileError(f"incomplete header ({e!r})") from None
    if declared != size:
        raise DataFileError(f"file holds {size} bytes, its header says {declared}: incomplete or damaged")
    if dtypes != _DTYPES:
        raise DataFileError(f"array types {dtypes} differ from {_DTYPES}")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise DataFileError("no class names")
    train, test = shapes["train_images"], shapes["test_images"]
    if len(train) != 4 or len(test) != 4 or train[1:] != test[1:] or min(train[1:]) < 1:
        raise DataFileError(f"image shapes {train} and {test} are not (N, C, H, W) of one image size")
    if shapes["train_labels"] != train[:1] or shapes["test_labels"] != test[:1]:
        raise DataFileError("label counts differ from image counts")
    end = 0
    for name in _ARRAYS:
        nbytes = int(np.prod(shapes[name])) * np.dtype(dtypes[name]).itemsize
        if offsets[name] < end or offsets[name] % _ALIGN or offsets[name] + nbytes > size:
            raise DataFileError(f"{name} lies outside the file or overlaps another array")
        end = offsets[name] + nbytes


def _list(value: Any) -> list:
    """A shape as the header must hold it: a JSON list (a string would iterate as digits)."""
    if not isinstance(value, list):
        raise TypeError(f"shape {value!r} is not a list")
    return value


def _count(value: Any) -> int:
    """A size or offset as the header must hold it: a JSON integer, not negative (no float, string or bool)."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{value!r} is not a whole number >= 0")
    return value


def _map(path: Path, spec: dict[str, Any], mode: str) -> np.ndarray:
    shape = tuple(spec["shape"])
    if int(np.prod(shape)) == 0:  # mmap cannot map zero bytes
        return np.empty(shape, dtype=spec["dtype"])
    return np.memmap(path, dtype=spec["dtype"], mode=mode, offset=spec["offset"], shape=shape)


def remove_stale_partial(path: Path) -> None:
    """Delete a ``.partial`` file a killed writer left (call only while holding the entry's lock)."""
    with contextlib.suppress(OSError):
        path.with_name(path.name + ".partial").unlink(missing_ok=True)
