"""A trained run as a classifier: uint8 images in, class probabilities out.

``predict`` and ``export`` both use :func:`load_classifier`, and ``evaluate`` its
:func:`load_run`; all three compute the run's one function, :func:`ignite_mlp.forward.run_forward`
(its preprocessing, fp32, its TTA), so the pictures a user classifies, the exported graphs and
the run's own evaluation agree image for image. Imports no Ignite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ignite_mlp.config.train_config import TrainConfig, resolve_device
from ignite_mlp.data import Dataset, load_dataset
from ignite_mlp.data.whitening import Whitening
from ignite_mlp.errors import UserError
from ignite_mlp.forward import Preprocess, run_forward
from ignite_mlp.model import MLP
from ignite_mlp.run.record import RunRecord
from ignite_mlp.run.rundir import RunDir, find_checkpoint


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
    classes, shape = _classes_and_image_shape(run, record, dataset)
    model = run.load_model(checkpoint, record, shape, len(classes))
    features = shape[0] * shape[1] * shape[2]
    whitening = run.read_whitening(features) if record.config.whiten != "none" else None
    return LoadedRun(run, checkpoint, record, classes, shape, model, whitening)


@dataclass
class Classifier:
    """A run's function (:func:`~ignite_mlp.forward.run_forward`) and a softmax:
    ``module(uint8 (N, C, H, W))`` gives probabilities ``(N, classes)``, in eval mode on ``device``."""

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
    forward = run_forward(loaded.model, config, loaded.image_shape[0], loaded.whitening)
    preprocessing = forward[0]
    module = nn.Sequential(forward, nn.Softmax(dim=1))
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


def _classes_and_image_shape(
    run: RunDir, record: RunRecord, dataset: Dataset | None
) -> tuple[list[str], tuple[int, int, int]]:
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
