"""A validation split held out of the training split, so the test split is seen only once.

The tutorial chooses hyperparameters on validation data and keeps the test set for one final
evaluation. :func:`split_validation` holds out ``n`` training images, stratified by class and
fixed by the seed, and returns a :class:`Dataset` whose ``test_*`` tensors are that held-out
part: every consumer of a run's data (validation, the best checkpoint, early stopping, the
learning-rate finder, TensorBoard's images) then uses it without knowing, and the real test
split is never touched until the run asks for it.
"""

from __future__ import annotations

import torch

from ignite_mlp.data.dataset import Dataset
from ignite_mlp.errors import UserError


def validation_count(val_split: float, train_size: int) -> int:
    """How many images ``--val-split`` holds out: a count as given, a fraction of ``train_size``.

    >>> validation_count(5000, 50000), validation_count(0.1, 50000), validation_count(0.25, 10)
    (5000, 5000, 2)
    """
    count = int(val_split) if val_split >= 1 else int(val_split * train_size)
    if not 1 <= count < train_size:
        raise UserError(
            f"--val-split {val_split:g} holds out {count} of the {train_size} training images; "
            f"give between 1 and {train_size - 1} images, or a fraction such as 0.1"
        )
    return count


def class_quotas(counts: list[int], n: int) -> list[int]:
    """Split ``n`` between classes in proportion to their ``counts`` (largest remainders; ties
    to the lower class index), never more than a class holds.

    >>> class_quotas([10, 20, 30], 12)
    [2, 4, 6]
    >>> class_quotas([5, 5, 5], 4)
    [2, 1, 1]
    """
    total = sum(counts)
    exact = [n * c / total for c in counts]
    quotas = [int(q) for q in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: n - sum(quotas)]:
        quotas[i] += 1
    return [min(q, c) for q, c in zip(quotas, counts, strict=True)]


def check_split(counts: list[int], n: int, classes: list[str]) -> None:
    """Refuse a split of ``n`` that holds out every training image of a class (training would
    never see it); the message names the largest smaller split that leaves each class some images.

    >>> check_split([5, 5, 1], 4, ["a", "b", "c"])
    >>> check_split([5, 5, 1], 5, ["a", "b", "c"])
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --val-split 5 holds out all 1 training images of class 'c'; give fewer, e.g. 4
    """
    emptied = [i for i, (q, c) in enumerate(zip(class_quotas(counts, n), counts, strict=True)) if c and q >= c]
    if not emptied:
        return
    most = n - 1
    while most > 0 and any(c and q >= c for q, c in zip(class_quotas(counts, most), counts, strict=True)):
        most -= 1
    cls = emptied[0]
    fix = f"give fewer, e.g. {most}" if most else "add training images to it"
    raise UserError(f"--val-split {n} holds out all {counts[cls]} training images of class {classes[cls]!r}; {fix}")


def validation_indices(labels: torch.Tensor, n: int, seed: int, num_classes: int) -> torch.Tensor:
    """The sorted indices of the ``n`` held-out images: each class's quota drawn at random with
    a generator seeded by ``seed`` alone, so the same seed always holds out the same images."""
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for cls, quota in enumerate(class_quotas(counts, n)):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    return torch.cat(picked).sort().values


def split_validation(dataset: Dataset, n: int, seed: int) -> Dataset:
    """``dataset`` with ``n`` training images moved into its ``test_*`` tensors as the
    validation split; the real test split is left out (read nothing of it here).

    >>> images = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    >>> ds = Dataset(images, torch.tensor([0, 0, 0, 1, 1, 1]), images[:0], torch.tensor([]), ["a", "b"], "toy")
    >>> val = split_validation(ds, 2, seed=0)
    >>> val.train_labels.tolist(), val.test_labels.tolist()
    ([0, 0, 1, 1], [0, 1])
    """
    check_split(torch.bincount(dataset.train_labels, minlength=dataset.num_classes).tolist(), n, dataset.classes)
    held = validation_indices(dataset.train_labels, n, seed, dataset.num_classes)
    keep = torch.ones(len(dataset.train_labels), dtype=torch.bool)
    keep[held] = False
    return Dataset(
        train_images=dataset.train_images[keep],
        train_labels=dataset.train_labels[keep],
        test_images=dataset.train_images[held],
        test_labels=dataset.train_labels[held],
        classes=dataset.classes,
        source=f"{dataset.source} (validation: {n} training images held out)",
    )
