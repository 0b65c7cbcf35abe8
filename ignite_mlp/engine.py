"""Ignite's supervised trainer and evaluator, with the metrics the logging dictionary needs.

Training accuracy and loss are Ignite metrics attached to the *trainer*, fed by the logits
each training step already computed: no second pass over the training set.

:func:`build_engines` is phase 3 of a run: the model, its optimizer and the two engines.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, create_supervised_evaluator, create_supervised_trainer
from ignite.handlers import EMAHandler
from ignite.metrics import Accuracy, Loss, Metric
from ignite.metrics.metric import reinit__is_reduced
from ignite.utils import manual_seed
from torch import nn

from ignite_mlp import ranks
from ignite_mlp.config import TrainConfig
from ignite_mlp.controls import attach_ema, make_optimizer
from ignite_mlp.model import MLP
from ignite_mlp.plan import RunPlan
from ignite_mlp.precision import forward_fn
from ignite_mlp.prepare import RunData


def flip_tta(
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """Test-time augmentation: the mean of the logits of each image and of its mirror image.

    For an affine model that is the model of the mean image:

    >>> model, x = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(3, 1, 2, 2)
    >>> torch.allclose(flip_tta(forward_fn("fp32", torch.device("cpu")))(model, x), model((x + x.flip(3)) / 2))
    True
    """

    def forward_both(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return (forward(model, x) + forward(model, x.flip(-1))) / 2

    return forward_both


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


def create_evaluator(
    model: nn.Module, loss_fn: nn.Module, device: torch.device, precision: str = "fp32", tta: bool = False
) -> Engine:
    """Ignite's supervised evaluator with ``accuracy`` (fraction) and sample-mean ``loss``; with
    ``tta`` the logits are those of :func:`flip_tta`."""
    forward = forward_fn(precision, device)
    return create_supervised_evaluator(
        model,
        metrics={"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)},
        device=device,
        model_fn=flip_tta(forward) if tta else forward,
    )


# ----------------------------------------------------------------------------- a run's engines


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW as the config says (see :func:`ignite_mlp.controls.make_optimizer`)."""
    return make_optimizer(
        model, config.optimizer, config.lr, config.momentum, config.weight_decay, config.nesterov, config.decay_norms
    )


class StopRequest:
    """SIGINT handler: the first Ctrl-C asks the trainer to stop after the current iteration
    (so the checkpoint is taken between steps, never mid-update); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@dataclass
class Engines:
    """The model, its optimizer and the two Ignite engines that run it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    train_metrics: dict[str, Metric]
    stop: StopRequest
    # "Have all ranks agreed to stop?": the Ctrl-C request, agreed on after every iteration.
    should_stop: Callable[[], bool]
    # --ema-momentum: Ignite's EMAHandler, and the model validation and the best checkpoint use.
    ema: EMAHandler | None = None
    eval_model: nn.Module | None = None


def build_engines(plan: RunPlan, data: RunData) -> Engines:
    """The model (checked against the checkpoint on a resume), the optimizer, the trainer with
    its training metrics and the evaluator."""
    config, device = plan.config, plan.device
    dataset = data.dataset
    model = MLP.from_config(config, dataset.in_features, dataset.num_classes).to(device)
    if plan.resume is not None:
        plan.resume.check_model(model)
    # Across ranks the trainer steps a DistributedDataParallel wrapper (gradients averaged over
    # the ranks); checkpoints, validation and user handlers keep the model itself.
    stepped, optimizer = ranks.wrap(model, build_optimizer(model, config), device)
    if plan.distributed:
        # Same weights everywhere (the wrapper copied rank 0's), but each rank its own dropout.
        manual_seed((config.seed + ranks.rank()) % 2**32)  # numpy takes seeds below 2**32
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    trainer = create_trainer(stepped, optimizer, loss_fn, device, data.precision.name)
    # --ema-momentum: validation, the best checkpoint and evaluate use the averaged weights.
    ema = attach_ema(trainer, model, config.ema_momentum)
    eval_model = ema.ema_model if ema is not None else model
    train_metrics = attach_train_metrics(trainer, device)
    stop = StopRequest()
    if plan.distributed:
        should_stop = ranks.attach_agreement(trainer, lambda: stop.requested)
    else:
        should_stop = lambda: stop.requested  # noqa: E731 - the one-process answer
    # Validation loss stays the plain cross-entropy, comparable across recipes and runs. It runs
    # the model itself, not its wrapper: no collective per batch, so validation shards may differ.
    evaluator = create_evaluator(eval_model, nn.CrossEntropyLoss(), device, data.precision.name, config.tta)
    data.train_loader.attach(trainer, data.epoch_length)
    return Engines(model, optimizer, trainer, evaluator, train_metrics, stop, should_stop, ema, eval_model)
