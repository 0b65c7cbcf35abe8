"""Ignite's supervised trainer and evaluator, with the metrics the logging dictionary needs.

Training accuracy and loss are Ignite metrics attached to the *trainer*, fed by the logits
each training step already computed: no second pass over the training set.

The run puts them together in :mod:`ignite_mlp.run.engines`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss, Metric
from ignite.metrics.metric import reinit__is_reduced
from torch import nn

from ignite_mlp.engine.precision import forward_fn
from ignite_mlp.forward import EvalForward


def _step_output(x: torch.Tensor, y: torch.Tensor, y_pred: torch.Tensor, loss: torch.Tensor) -> dict[str, Any]:
    # Keep tensors (no .item()): on a GPU that would force a sync every iteration.
    return {"loss": loss.detach(), "y_pred": y_pred.detach(), "y": y}


def _logits_and_labels(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return output["y_pred"], output["y"]


class _CountedAtIntervals(Metric):
    """An Ignite metric that keeps each step's output and reduces them in one vectorised pass
    every ``fold_every`` steps, at ``compute()`` and at ``state_dict()``.

    Reducing each batch as it comes (Ignite's ``Accuracy`` takes an argmax, a comparison, a
    sum, an add and its input checks per step) costs a few percent of a CPU training epoch:
    small tensor ops run cold between the big matrix products. Keeping references is nearly
    free, and memory stays bounded by ``fold_every`` steps' outputs. They are kept as given, so
    they must carry no autograd graph and not be overwritten later: true of what
    :func:`create_trainer`'s step returns (detached logits and loss, this package's labels). The running
    totals are a float64 tensor ``[numerator, count]`` on the metric's device (no sync per step
    on a GPU), summed across processes at ``compute()``, and saved in checkpoints.
    """

    _state_dict_all_req_keys = ("_totals",)

    def __init__(self, output_transform: Callable[[Any], Any], device: torch.device | str, fold_every: int = 64):
        self.fold_every = fold_every
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._totals = torch.zeros(2, dtype=torch.float64, device=self._device)
        self._pending: list[Any] = []

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        self._pending.append(output)
        if len(self._pending) >= self.fold_every:
            self._fold()

    def _fold(self) -> None:
        if self._pending:
            self._totals += self._reduce(self._pending).to(self._totals)
            self._pending = []

    @abstractmethod
    def _reduce(self, outputs: list[Any]) -> torch.Tensor:
        """``[numerator, count]`` of these steps' outputs."""

    def state_dict(self) -> Any:
        self._fold()
        return super().state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        super().load_state_dict(state_dict)
        self._totals = self._totals.to(self._device)  # checkpoints load on the CPU

    def compute(self) -> float:
        self._fold()
        numerator, count = idist.all_reduce(self._totals.clone()).tolist()
        if count == 0:
            raise RuntimeError(f"{type(self).__name__} needs at least one batch before compute()")
        return numerator / count


class TrainAccuracy(_CountedAtIntervals):
    """Fraction of training samples whose logits' argmax is the label, from ``(logits, labels)``
    of each step: what Ignite's ``Accuracy`` gives for multiclass logits, counted in batches of
    steps (see :class:`_CountedAtIntervals`).

    >>> from ignite.engine import Engine
    >>> steps = [(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))] * 3
    >>> engine = Engine(lambda e, batch: batch)
    >>> TrainAccuracy(lambda out: out, "cpu", fold_every=2).attach(engine, "accuracy")
    >>> engine.run(steps).metrics["accuracy"]
    0.5
    """

    def _reduce(self, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        logits = torch.cat([y_pred for y_pred, _ in outputs])
        labels = torch.cat([y for _, y in outputs])
        if labels.ndim == 2:  # mixed batches (MixUp, CutMix) carry class probabilities: count the larger
            labels = labels.argmax(1)
        if logits.ndim != 2 or labels.shape != logits.shape[:1]:
            raise ValueError(
                f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
            )
        correct = (logits.argmax(dim=1) == labels).sum()
        return torch.stack([correct.double(), torch.tensor(float(len(labels)), device=correct.device)])


class MeanLoss(_CountedAtIntervals):
    """Per-sample mean of the loss each training step already computed, from ``(batch mean
    loss, batch size)``: Ignite's ``Loss`` metric would call the loss function again on every
    batch; the steps' own batch means, weighted by batch size, give the same epoch mean.

    >>> from ignite.engine import Engine
    >>> engine = Engine(lambda e, batch: batch)
    >>> MeanLoss(lambda out: out, "cpu").attach(engine, "loss")
    >>> engine.run([(torch.tensor(1.0), 3), (torch.tensor(2.0), 1)]).metrics["loss"]
    1.25
    """

    def _reduce(self, outputs: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        losses = torch.stack([loss for loss, _ in outputs]).double()
        sizes = torch.tensor([float(n) for _, n in outputs], dtype=torch.float64, device=losses.device)
        return torch.stack([(losses * sizes).sum(), sizes.sum()])


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    precision: str = "fp32",
) -> Engine:
    """Ignite's supervised trainer; ``state.output`` is ``{"loss", "y_pred", "y"}``."""
    return create_supervised_trainer(
        model,
        optimizer,
        loss_fn,
        device=device,
        output_transform=_step_output,
        model_fn=forward_fn(precision, device),
    )


def attach_train_metrics(trainer: Engine, device: torch.device) -> dict[str, Metric]:
    """This epoch's training ``accuracy`` (fraction) and mean ``loss`` in ``trainer.state.metrics``,
    from each step's own outputs. Returns the metric objects (a checkpoint saves their state)."""
    metrics: dict[str, Metric] = {
        "accuracy": TrainAccuracy(output_transform=_logits_and_labels, device=device),
        "loss": MeanLoss(output_transform=lambda out: (out["loss"], len(out["y"])), device=device),
    }
    for name, metric in metrics.items():
        metric.attach(trainer, name)
    return metrics


def create_evaluator(model: nn.Module, loss_fn: nn.Module, device: torch.device, tta: bool = False) -> Engine:
    """Ignite's supervised evaluator with ``accuracy`` (fraction) and sample-mean ``loss`` of
    ``model``'s evaluation logits (:class:`~ignite_mlp.forward.EvalForward`: fp32, the mirror
    image averaged in with ``tta``), on batches already preprocessed by the loaders."""
    return create_evaluator_of(EvalForward(model, tta), loss_fn, device)


def create_evaluator_of(forward: nn.Module, loss_fn: nn.Module, device: torch.device) -> Engine:
    """Ignite's supervised evaluator of a whole evaluation function (``forward(x)`` gives logits):
    ``accuracy`` (fraction) and sample-mean ``loss``."""
    return create_supervised_evaluator(
        forward,
        metrics={"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)},
        device=device,
    )
