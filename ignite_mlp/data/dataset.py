"""The decoded data set every source becomes, its label check and its printed summary."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from ignite_mlp.errors import UserError


@dataclass
class Dataset:
    """Decoded train and test splits as uint8 ``(N, C, H, W)`` images and int64 labels.

    Loaded from the cache, the tensors are views of one read-only memory-mapped file (see
    :mod:`ignite_mlp.data.cache`): every process on the machine shares its pages.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str
    # The fingerprint, once computed. Not an __init__ field, so dataclasses.replace (whitened copies,
    # for one) never hands a copy with other tensors the original's fingerprint.
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """The data's identity: a SHA-256 of the class names and of each split's shape, pixels and
        labels as decoded (not of the files, so a copy elsewhere or a re-encoded archive of the same
        pixels is the same data). Computed once per object, from memory: a tenth of a second for
        CIFAR-10. A run records it; a resume, a sweep and ``evaluate`` compare it.

        >>> a = Dataset(torch.zeros(2, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 1]),
        ...             torch.zeros(1, 1, 1, 1, dtype=torch.uint8), torch.tensor([1]), ["a", "b"], "x")
        >>> b = Dataset(a.train_images, torch.tensor([1, 0]), a.test_images, a.test_labels, ["a", "b"], "x")
        >>> len(a.fingerprint), a.fingerprint == b.fingerprint
        (64, False)
        >>> import dataclasses
        >>> dataclasses.replace(a, train_images=a.train_images + 1).fingerprint == a.fingerprint
        False
        """
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(list(self.classes)).encode())
            for tensor in (self.train_images, self.train_labels, self.test_images, self.test_labels):
                h.update(json.dumps([str(tensor.dtype), list(tensor.shape)]).encode())
                if tensor.numel():  # (hashed in place: no copy of the pixels)
                    h.update(memoryview(tensor.cpu().contiguous().numpy()).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def counts(self) -> dict[str, int]:
        """Images per split: ``{"train": N, "test": M}``."""
        return {"train": len(self.train_labels), "test": len(self.test_labels)}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def in_features(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_labels(labels: torch.Tensor, num_classes: int, split: str) -> None:
    """Refuse labels outside ``[0, num_classes)`` here, not as a device-side assert mid-training.

    >>> check_labels(torch.tensor([0, 3]), 3, "train")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: train labels must lie in [0, 2] for 3 classes, found 3; ...
    """
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise UserError(
            f"{split} labels must lie in [0, {num_classes - 1}] for {num_classes} classes, found {bad}; "
            "the number of classes must match the data"
        )


def summarize(dataset: Dataset, batch_size: int, held: str = "test") -> str:
    """A printout like the tutorial's: classes, counts, image shape, batches per epoch. ``held``
    names what the ``test_*`` tensors are to the run: the test split, or with ``--val-split`` the
    validation images held out of the training split.

    >>> images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    >>> print(summarize(Dataset(images, torch.tensor([0, 1, 0, 1]), images[:2], torch.tensor([0, 1]), ["a", "b"], "d"),
    ...                 batch_size=2, held="validation"))
    data: d
      2 classes (train/validation images): a 2/1, b 2/1
      train 4 images, validation 2 images, image shape 1x2x2 (4 inputs)
      2 batches of 2 per epoch
    """
    c, h, w = dataset.image_shape
    counts = torch.bincount(dataset.train_labels, minlength=dataset.num_classes).tolist()
    test_counts = torch.bincount(dataset.test_labels, minlength=dataset.num_classes).tolist()
    per_class = ", ".join(f"{n} {tr}/{te}" for n, tr, te in zip(dataset.classes, counts, test_counts, strict=True))
    batches = -(-len(dataset.train_labels) // batch_size)
    return (
        f"data: {dataset.source}\n"
        f"  {dataset.num_classes} classes (train/{held} images): {per_class}\n"
        f"  train {len(dataset.train_labels)} images, {held} {len(dataset.test_labels)} images, "
        f"image shape {c}x{h}x{w} ({dataset.in_features} inputs)\n"
        f"  {batches} batches of {batch_size} per epoch"
    )
