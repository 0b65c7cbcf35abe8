"""What a run records of its data, and how other data differs from it.

A run's configuration keeps its data's class names (label order), image shape, image counts and
fingerprint (:attr:`Dataset.fingerprint <ignite_mlp.data.dataset.Dataset.fingerprint>`, a hash of the
decoded pixels and labels). A checkpoint's outputs mean those classes and its inputs those pixels:
other classes or shapes are refused wherever a run's weights meet data; other images of the same
classes are refused by a resume (a ``--val-split`` drawn again would validate on trained images)
and named by ``evaluate``. Imports no Ignite.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite_mlp.data.dataset import Dataset
from ignite_mlp.errors import UserError


def data_record(dataset: Dataset) -> dict[str, Any]:
    """What a run records of its data in its configuration file: the class names in label order,
    the image shape ``[C, H, W]``, the images per split and the fingerprint of ``dataset`` (the
    data as loaded, before a ``--val-split`` carves it)."""
    return {
        "classes": list(dataset.classes),
        "image_shape": list(dataset.image_shape),
        "data_counts": dataset.counts,
        "data_fingerprint": dataset.fingerprint,
    }


def check_same_data(record: Mapping[str, Any], dataset: Dataset, run_dir: Path, data: str) -> None:
    """Refuse ``dataset`` (read from ``data``) when its classes or image shape differ from the
    ``record`` of the run in ``run_dir`` (see :func:`data_record`; an older run without one
    is not checked).

    >>> from types import SimpleNamespace as Data
    >>> record = {"classes": ["ant", "bee"], "image_shape": [3, 8, 8]}
    >>> check_same_data(record, Data(classes=["bee", "ant"], image_shape=(3, 8, 8)), Path("run"), "d")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: d: its classes are the run's in another order (['bee', 'ant'], the run: ...
    """
    saved = record.get("classes")
    if saved is not None and list(saved) != list(dataset.classes):
        raise UserError(
            f"{data}: {_class_difference(list(saved), list(dataset.classes))}; labels would be mixed up: "
            f"use data with the class folders of {run_dir} (see its configuration)"
        )
    shape = record.get("image_shape")
    if shape is not None and list(shape) != list(dataset.image_shape):
        raise UserError(
            f"{data}: its images are {'x'.join(map(str, dataset.image_shape))} but {run_dir} was trained on "
            f"{'x'.join(map(str, shape))} images; use data of that shape"
        )


def _class_difference(saved: list[str], found: list[str], show: int = 5) -> str:
    """How the data's class names differ from the run's, briefly."""

    def names(items: list[str]) -> str:
        return repr(items[:show])[:-1] + (", ...]" if len(items) > show else "]")

    if sorted(saved) == sorted(found):
        return f"its classes are the run's in another order ({names(found)}, the run: {names(saved)})"
    missing = [c for c in saved if c not in found]
    extra = [c for c in found if c not in saved]
    return (
        f"its {len(found)} classes are not the run's {len(saved)} "
        f"(only in the run: {names(missing)}; only in the data: {names(extra)})"
    )


def data_change(record: Mapping[str, Any], dataset: Dataset) -> str | None:
    """How ``dataset`` differs from the data a run recorded (see :func:`data_record`), in a few
    words, or None when it is the same data (or the run is older than its fingerprint).

    >>> import torch
    >>> images, labels = torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0])
    >>> data = Dataset(images, labels, images[:1], labels[:1], ["a", "b"], "d")
    >>> record = data_record(data)
    >>> data_change(record, data) is None
    True
    >>> data_change(record, Dataset(images[:2], labels[:2], images[:1], labels[:1], ["a", "b"], "d"))
    'train images 3 -> 2'
    >>> data_change(record, Dataset(images + 1, labels, images[:1], labels[:1], ["a", "b"], "d"))
    'the same classes and image counts, other pixels or labels'
    """
    saved = record.get("data_fingerprint")
    if saved is None or saved == dataset.fingerprint:
        return None
    if list(record.get("classes") or dataset.classes) != list(dataset.classes):
        return _class_difference(list(record["classes"]), list(dataset.classes))
    counts = record.get("data_counts") or {}
    changed = [
        f"{split} images {counts[split]} -> {n}"
        for split, n in dataset.counts.items()
        if isinstance(counts.get(split), int) and counts[split] != n
    ]
    return ", ".join(changed) or "the same classes and image counts, other pixels or labels"
