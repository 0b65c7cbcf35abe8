"""Evaluate a trained run's checkpoint on the validation split, and draw sample grids.

ignite-mlp evaluate runs/20261129-101500              # its best checkpoint
ignite-mlp evaluate runs/.../checkpoints/best_model_48_val_acc=51.4900.pt --data other.tar.gz
ignite-mlp samples --data ../shared/data/cifar10-jpg.tar.gz --out grid.png
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix
from torch import nn

from ignite_mlp import checkpoint_names
from ignite_mlp.config.train_config import resolve_device
from ignite_mlp.data import Dataset, TensorLoader, denormalize, load_dataset
from ignite_mlp.data.identity import check_same_data, data_change
from ignite_mlp.engine.trainer import create_evaluator_of
from ignite_mlp.errors import UserError
from ignite_mlp.forward import run_forward
from ignite_mlp.inference.classifier import load_run
from ignite_mlp.plots import image_grid, spread_over_classes
from ignite_mlp.run.rundir import find_checkpoint


@dataclass
class Evaluation:
    """Loss, accuracy (percent), per-class accuracy and the confusion matrix of one checkpoint."""

    checkpoint: Path
    epoch: int | None
    loss: float
    accuracy: float
    per_class: dict[str, float]
    confusion: torch.Tensor  # rows: true class, columns: predicted class
    # The predicted class of every validation image, in the data's order.
    predictions: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    # What the images are to the run: its validation data, or (a --val-split run) its test split.
    split: str = "validation"
    # Set when the data is not the data the run trained on (its recorded fingerprint): how it differs.
    other_data: str | None = None

    def report(self) -> str:
        width = max(len(c) for c in self.per_class)
        lines = [
            *([f"note: not the data the run trained on ({self.other_data})"] if self.other_data else []),
            f"checkpoint: {self.checkpoint}" + (f" (epoch {self.epoch})" if self.epoch else ""),
            f"{self.split} loss {self.loss:.4f}, accuracy {self.accuracy:.2f}%",
            "per-class accuracy:",
        ]
        lines += [f"  {name:<{width}}  {acc:6.2f}%" for name, acc in self.per_class.items()]
        return "\n".join(lines)


def evaluate(
    target: str | Path, data: str | None = None, device: str = "auto", dataset: Dataset | None = None
) -> Evaluation:
    """Evaluate the checkpoint of ``target`` on the validation split of the run's data (or ``data``)."""
    run, _ = find_checkpoint(target)
    config = run.read_config().config
    if dataset is None:
        dataset = load_dataset(data or config.data, config.cache_dir, download=False)
    loaded = load_run(target, dataset)
    check_same_data(
        loaded.record.values, dataset, run.path, f"--data {data}" if data else f"the run's data {config.data}"
    )
    if tuple(dataset.image_shape) != loaded.image_shape or dataset.num_classes != len(loaded.classes):
        raise UserError(
            f"{data or config.data}: its images or classes are not those {loaded.checkpoint} was trained on; "
            "evaluate a checkpoint with data of its own image shape and classes"
        )
    torch_device = resolve_device(device)
    # The run's one function (its preprocessing and whitening, fp32, its TTA) on the uint8 images:
    # what predict and the exported graphs compute too.
    forward = run_forward(loaded.model, config, loaded.image_shape[0], loaded.whitening).to(torch_device)
    images, labels, size = dataset.test_images, dataset.test_labels, config.eval_batch_size
    loader = [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]
    evaluator = create_evaluator_of(forward, nn.CrossEntropyLoss(), torch_device)
    ConfusionMatrix(dataset.num_classes, device=torch_device).attach(evaluator, "confusion")
    predictions = _collect_predictions(evaluator)
    metrics = evaluator.run(loader).metrics
    confusion = metrics["confusion"].cpu().long()
    per_class = 100.0 * confusion.diag().double() / confusion.sum(1).clamp_min(1).double()
    checkpoint = loaded.checkpoint
    return Evaluation(
        checkpoint=checkpoint,
        epoch=checkpoint_names.best_epoch(checkpoint.name),
        loss=float(metrics["loss"]),
        accuracy=100.0 * float(metrics["accuracy"]),
        per_class={name: float(acc) for name, acc in zip(dataset.classes, per_class.tolist(), strict=True)},
        confusion=confusion,
        predictions=torch.cat(predictions).cpu() if predictions else torch.empty(0, dtype=torch.long),
        # A --val-split run validated on held-out training images: these are its test images.
        split="test split" if config.val_split else "validation",
        other_data=data_change(loaded.record.values, dataset),
    )


def _collect_predictions(evaluator: Engine) -> list[torch.Tensor]:
    """The argmax of each batch, kept on the device (no sync per batch) in a list filled as it runs."""
    predictions: list[torch.Tensor] = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: predictions.append(engine.state.output[0].argmax(dim=1))
    )
    return predictions


def misclassified_grid(evaluation: Evaluation, dataset: Dataset, count: int = 32) -> np.ndarray | None:
    """Up to ``count`` validation images ``evaluation`` got wrong, spread over their true classes
    and titled with the predicted and the true class (as TensorBoard's ``val/misclassified``);
    ``dataset`` is the one evaluated. None when every image was classified right.
    """
    true = dataset.test_labels.cpu()
    if len(evaluation.predictions) != len(true):
        raise ValueError(f"{len(evaluation.predictions)} predictions for {len(true)} validation images")
    wrong = torch.nonzero(evaluation.predictions != true).flatten()
    # Not the first `count`: the data are usually sorted by class, so those would be one class.
    wrong = wrong[torch.as_tensor(spread_over_classes(true[wrong].numpy(), count))]
    if not len(wrong):
        return None
    titles = [
        f"pred {dataset.classes[p]}\ntrue {dataset.classes[t]}"
        for p, t in zip(evaluation.predictions[wrong].tolist(), true[wrong].tolist(), strict=True)
    ]
    return image_grid(dataset.test_images[wrong].cpu(), titles)


def one_hot_line(label: int, classes: Sequence[str]) -> str:
    """The tutorial's one-hot printout for one label: ``F.one_hot(torch.tensor(label), num_classes)``.

    >>> one_hot_line(2, ["ant", "bee", "cat"])
    'label 2 (cat) one-hot: tensor([0, 0, 1])'
    """
    return f"label {label} ({classes[label]}) one-hot: {F.one_hot(torch.tensor(label), len(classes))}"


@dataclass
class Samples:
    """Random training images (uint8 ``(N, C, H, W)``, as displayed) with their labels."""

    images: torch.Tensor
    labels: list[int]
    classes: list[str]

    def grid(self) -> np.ndarray:
        """The images side by side, each titled with its class."""
        return image_grid(self.images, [self.classes[i] for i in self.labels])

    def one_hot_line(self, index: int = 0) -> str:
        """:func:`one_hot_line` for the ``index``-th image (the grid's first by default)."""
        return one_hot_line(self.labels[index], self.classes)


def draw_samples(
    data: str | Path | Dataset, count: int = 32, seed: int = 0, mean: float = 0.5, std: float = 0.5
) -> Samples:
    """``count`` random training images of ``data`` (a source, or a loaded :class:`Dataset`), as
    the tutorial shows them: batches are normalised as for training, then the normalisation is
    undone for display."""
    dataset = data if isinstance(data, Dataset) else load_dataset(data, download=True)
    loader = TensorLoader(
        dataset.train_images,
        dataset.train_labels,
        min(count, len(dataset.train_labels)),
        [mean],
        [std],
        shuffle=True,
        seed=seed,
    )
    x, y = next(iter(loader))
    return Samples(denormalize(x, [mean], [std]), y.tolist(), list(dataset.classes))
