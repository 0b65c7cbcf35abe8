"""A trained run as a classifier: uint8 images in, class probabilities out.

``predict`` and ``export`` both use :func:`load_classifier`, and ``evaluate`` its
:func:`load_run`, so the pictures a user classifies, the exported graphs and the run's own
validation agree: the same preprocessing (:func:`run_preprocessing`, the one place that knows
how a run normalises its inputs), the same weights, the same arithmetic. Imports no Ignite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ignite_mlp.config.train_config import TrainConfig, resolve_device
from ignite_mlp.data import Dataset, load_dataset, normalization
from ignite_mlp.data.whitening import Whitening
from ignite_mlp.errors import UserError
from ignite_mlp.model import MLP
from ignite_mlp.run.rundir import RunDir, RunRecord, find_checkpoint


class Preprocess(nn.Module):
    """uint8 ``(N, C, H, W)`` images to the float inputs the model was trained on:
    ``(x / 255 - mean) / std`` per channel, as ``x * scale + shift`` (the training loader's
    arithmetic, so the same values); or, for a run trained on whitened images,
    ``(x / 255 - mean) @ matrix`` over the flattened image (:mod:`ignite_mlp.data.whitening`)."""

    def __init__(
        self,
        scale: torch.Tensor,
        shift: torch.Tensor,
        description: dict[str, Any] | None = None,
        whitening: Whitening | None = None,
    ) -> None:
        super().__init__()
        # What it does, in the run's own terms (exported files carry it in their metadata).
        self.description = dict(description or {})
        self.register_buffer("scale", scale.float().reshape(1, -1, 1, 1))
        self.register_buffer("shift", shift.float().reshape(1, -1, 1, 1))
        self.whitened = whitening is not None
        # Registered either way (empty without a whitening): TorchScript compiles both branches.
        self.register_buffer("white_mean", whitening.mean.float() if whitening else torch.zeros(0))
        self.register_buffer("white_matrix", whitening.matrix.float() if whitening else torch.zeros(0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.whitened:
            return x.float() * self.scale + self.shift
        flat = x.flatten(1).float() / 255 - self.white_mean
        return (flat @ self.white_matrix).reshape(x.shape)


def run_preprocessing(config: TrainConfig, channels: int, whitening: Whitening | None = None) -> Preprocess:
    """How a run with ``config`` turned uint8 images of ``channels`` channels into model inputs, as
    a module (uint8 ``(N, C, H, W)`` in, float out): the per-channel mean/std of its configuration
    (fixed, or measured on the training set), or the ``whitening`` it trained with (--whiten);
    anything a run adds to its preprocessing belongs here.

    >>> pre = run_preprocessing(TrainConfig(mean=[0.5], std=[0.5]), channels=3)
    >>> pre(torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 3, 1, 1)).flatten().tolist()
    [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    """
    scale, shift = normalization(config.mean, config.std, channels)
    if whitening is not None:  # the ZCA transform it trained with
        description = {"normalize": "(x / 255 - mean) @ matrix over the flattened image", "whiten": config.whiten}
        return Preprocess(scale, shift, description, whitening)
    return Preprocess(scale, shift, {"normalize": "(x / 255 - mean) / std", "mean": config.mean, "std": config.std})


@dataclass
class LoadedRun:
    """A run's trained network as its files describe it: the checked configuration, the classes
    and image shape, the model with a checkpoint's weights (eval mode, CPU) and its whitening."""

    run: RunDir
    checkpoint: Path
    record: RunRecord
    classes: list[str]
    image_shape: tuple[int, int, int]
    model: MLP
    whitening: Whitening | None


def load_run(target: str | Path, dataset: Dataset | None = None) -> LoadedRun:
    """The network of ``target`` (a run directory: its best checkpoint; or a checkpoint file),
    every file read through :class:`RunDir`'s checked readers. ``dataset``: the data of a run
    too old to record its classes and image shape (else its own data is read for them)."""
    run, checkpoint = find_checkpoint(target)
    record = run.read_config()
    classes, shape = _card(run, record, dataset)
    model = run.load_model(checkpoint, record, shape, len(classes))
    features = shape[0] * shape[1] * shape[2]
    whitening = run.read_whitening(features) if record.config.whiten != "none" else None
    return LoadedRun(run, checkpoint, record, classes, shape, model, whitening)


@dataclass
class Classifier:
    """A run's model with its preprocessing and a softmax: ``module(uint8 (N, C, H, W))`` gives
    probabilities ``(N, classes)``, in eval mode on ``device``."""

    module: nn.Module
    preprocessing: Preprocess  # the first stage of ``module``
    run_dir: Path
    checkpoint: Path
    config: TrainConfig
    classes: list[str]
    image_shape: tuple[int, int, int]
    device: torch.device

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (float, on the CPU) of a uint8 ``(N, C, H, W)`` batch."""
        return self.module(images.to(self.device)).float().cpu()


def load_classifier(target: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier of a run directory (its best checkpoint) or of one checkpoint file."""
    loaded = load_run(target)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    config = loaded.record.config
    preprocessing = run_preprocessing(config, loaded.image_shape[0], loaded.whitening)
    module = nn.Sequential(preprocessing, loaded.model, nn.Softmax(dim=1))
    module.eval().to(torch_device)
    return Classifier(
        module,
        preprocessing,
        loaded.run.path,
        loaded.checkpoint,
        config,
        loaded.classes,
        loaded.image_shape,
        torch_device,
    )


def _card(run: RunDir, record: RunRecord, dataset: Dataset | None) -> tuple[list[str], tuple[int, int, int]]:
    """The run's class names and image shape: from its configuration, or (runs written before
    it held them) from ``dataset`` or its data set's decode cache."""
    if record.classes is not None and record.image_shape is not None:
        return list(record.classes), record.image_shape
    if dataset is None:
        try:
            dataset = load_dataset(record.config.data, record.config.cache_dir, download=False)
        except UserError as e:
            raise UserError(
                f"{run.path}: its configuration names no classes and its data cannot be read ({e}); "
                "retrain the run with this version of ignite_mlp"
            ) from None
    return list(dataset.classes), tuple(dataset.image_shape)  # type: ignore[return-value]


def validation_images(classifier: Classifier, count: int = 256, data: str | None = None) -> tuple[torch.Tensor, str]:
    """``count`` validation images of the run's data (or ``data``), spread evenly over the test
    split (which is sorted by class, so every class is in), and where they came from. If the
    data cannot be read, random uint8 images of the run's shape, and a note saying so."""
    try:
        dataset = load_dataset(data or classifier.config.data, classifier.config.cache_dir, download=False)
    except UserError as e:
        if data is not None:  # data the user named: its problem is the answer, not random images
            raise
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, *classifier.image_shape), dtype=torch.uint8, generator=generator)
        return images, f"{count} random images (the run's data could not be read: {e})"
    if tuple(dataset.image_shape) != classifier.image_shape:
        raise UserError(
            f"--data {data or classifier.config.data}: images {tuple(dataset.image_shape)} but the run was trained "
            f"on {classifier.image_shape}; give the run's own data"
        )
    total = len(dataset.test_images)
    picks = torch.linspace(0, total - 1, min(count, total)).round().long()
    return dataset.test_images[picks], f"{len(picks)} validation images"


def top_k(probabilities: torch.Tensor, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable classes with their probabilities, most probable first.

    >>> top_k(torch.tensor([[0.1, 0.7, 0.2]]), ["a", "b", "c"], 2)
    [[('b', 0.699999988079071), ('c', 0.20000000298023224)]]
    """
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [(classes[i], p) for i, p in zip(row_i, row_p, strict=True)]
        for row_i, row_p in zip(indices.tolist(), values.tolist(), strict=True)
    ]
