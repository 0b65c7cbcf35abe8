"""The images a run shows in TensorBoard: training samples, the confusion matrix, misclassified images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import ConfusionMatrix

from ignite_mlp.data import denormalize
from ignite_mlp.handlers.tensorboard.events import add_image
from ignite_mlp.plots import confusion_matrix_figure, image_grid, rank_within_class, spread_over_classes

SAMPLE_IMAGES = 32  # training images in the grid logged at the start
MISCLASSIFIED_IMAGES = 32  # at most this many misclassified validation images per grid
GRID_COLUMNS = 8
CONFUSION_MATRIX = "confusion_matrix"  # the evaluator metric's name


def sample_grid(
    images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], count: int = SAMPLE_IMAGES
) -> np.ndarray:
    """``count`` training images picked by a fixed seed, sorted by class, titled with it."""
    # A generator of its own: drawing from the global one would change the training run.
    picked = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    picked = picked[torch.argsort(labels[picked], stable=True)]
    titles = [classes[int(k)] for k in labels[picked]]
    return image_grid(images[picked].cpu(), titles, ncols=GRID_COLUMNS)


def attach_confusion_matrix(evaluator: Engine, num_classes: int, device: torch.device | str = "cpu") -> None:
    """Ignite's ``ConfusionMatrix`` on the evaluator, as ``metrics["confusion_matrix"]``.

    Reduced across ranks like every Ignite metric, so in a multi-process run every rank attaches
    it, not only rank 0 that draws it (see :func:`ignite_mlp.run.training.train`).
    """
    ConfusionMatrix(num_classes, device=device).attach(evaluator, CONFUSION_MATRIX)


class ValidationImages:
    """The confusion matrix and a grid of misclassified validation images, every ``every``
    epochs and at the last one.

    The matrix is Ignite's ``ConfusionMatrix`` attached to the evaluator. The misclassified
    images are collected during evaluation, up to ``count`` per true class, their pixels
    recovered from the normalised batch (``normalization`` = (mean, std)); the grid shows
    ``count`` of them spread over the classes (:func:`spread_over_classes`). Once every class
    has enough, later batches cost nothing. In a multi-process run they come from rank 0's
    share of the validation set; the matrix counts every rank's.
    """

    def __init__(
        self,
        trainer: Engine,
        evaluator: Engine,
        classes: Sequence[str],
        every: int = 1,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        device: torch.device | str = "cpu",
        count: int = MISCLASSIFIED_IMAGES,
    ) -> None:
        self.trainer, self.evaluator, self.classes = trainer, evaluator, list(classes)
        self.every, self.normalization, self.count = every, normalization, count
        attach_confusion_matrix(evaluator, len(self.classes), device)
        self.images: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []
        self.per_class = torch.zeros(len(self.classes), dtype=torch.long)  # images kept per true class
        if normalization is not None:
            evaluator.add_event_handler(Events.STARTED, self._reset)
            evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._collect)

    def due(self) -> bool:
        epoch = self.trainer.state.epoch
        return epoch % self.every == 0 or epoch == self.trainer.state.max_epochs

    def _reset(self, _: Engine) -> None:
        self.images, self.predicted, self.true = [], [], []
        self.per_class.zero_()

    def _collect(self, engine: Engine) -> None:
        if int(self.per_class.min()) >= self.count or not self.due():
            return
        x = engine.state.batch[0]
        y_pred, y = engine.state.output[:2]
        predicted = y_pred.argmax(dim=1)
        wrong = torch.nonzero(predicted != y).flatten()
        true = y[wrong].cpu()
        # Keep a mistake only while its class has fewer than `count`: the grid needs no more.
        keep = torch.as_tensor(rank_within_class(true.numpy())) + self.per_class[true] < self.count
        wrong, true = wrong[keep.to(wrong.device)], true[keep]
        if len(wrong):
            assert self.normalization is not None
            self.images.append(denormalize(x.index_select(0, wrong.to(x.device)), *self.normalization).cpu())
            self.predicted.append(predicted[wrong].cpu())
            self.true.append(true)
            self.per_class += torch.bincount(true, minlength=len(self.classes))

    def log(self, writer: Any, step: int) -> None:
        """Write this epoch's images, if it is due; call after validation."""
        if not self.due():
            return
        matrix = self.evaluator.state.metrics[CONFUSION_MATRIX].cpu().numpy()
        add_image(writer, "val/confusion_matrix", confusion_matrix_figure(matrix, self.classes), step)
        if self.images:
            true = torch.cat(self.true)
            shown = torch.as_tensor(spread_over_classes(true.numpy(), self.count))
            titles = [
                f"pred {self.classes[p]}\ntrue {self.classes[t]}"
                for p, t in zip(torch.cat(self.predicted)[shown].tolist(), true[shown].tolist(), strict=True)
            ]
            grid = image_grid(torch.cat(self.images)[shown], titles, GRID_COLUMNS)
            add_image(writer, "val/misclassified", grid, step)
