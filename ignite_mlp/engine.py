"""Ignite's supervised trainer and evaluator, with the metrics the logging dictionary needs.

Training accuracy and loss are Ignite metrics attached to the *trainer*, fed by the logits
each training step already computed: no second pass over the training set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss, Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from torch import nn


def forward_fn(precision: str, device: torch.device) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """How the engines call the model: plainly, or under bf16 autocast with fp32 logits out.

    Only the forward pass is autocast; the loss and the optimiser step stay in fp32.

    >>> forward = forward_fn("bf16", torch.device("cpu"))
    >>> forward(nn.Linear(4, 2), torch.ones(3, 4)).dtype
    torch.float32
    """
    if precision == "fp32":
        return lambda model, x: model(x)

    def autocast_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return model(x).float()

    return autocast_forward


def _step_output(x: torch.Tensor, y: torch.Tensor, y_pred: torch.Tensor, loss: torch.Tensor) -> dict[str, Any]:
    # Keep tensors (no .item()): on a GPU that would force a sync every iteration.
    return {"loss": loss.detach(), "y_pred": y_pred.detach(), "y": y}


def _logits_and_labels(output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return output["y_pred"], output["y"]


class MeanLoss(Metric):
    """Per-sample mean of the loss the training step already computed (no recomputation).

    Ignite's ``Loss`` metric would call the loss function again on every batch; the step's
    own batch-mean loss, weighted by batch size, gives the same epoch mean for free.
    Reduced across processes like every Ignite metric.
    """

    _state_dict_all_req_keys = ("_sum", "_num_examples")

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self._device)
        self._num_examples = 0

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, int]) -> None:
        loss, n = output
        self._sum.add_(loss.detach(), alpha=n)  # one op: converted to float64, scaled, added
        self._num_examples += n

    @sync_all_reduce("_sum", "_num_examples")
    def compute(self) -> float:
        if self._num_examples == 0:
            raise RuntimeError("MeanLoss needs at least one batch before compute()")
        return self._sum.item() / self._num_examples


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
        "accuracy": Accuracy(output_transform=_logits_and_labels, device=device),
        "loss": MeanLoss(output_transform=lambda out: (out["loss"], len(out["y"])), device=device),
    }
    for name, metric in metrics.items():
        metric.attach(trainer, name)
    return metrics


def create_evaluator(model: nn.Module, loss_fn: nn.Module, device: torch.device, precision: str = "fp32") -> Engine:
    """Ignite's supervised evaluator with ``accuracy`` (fraction) and sample-mean ``loss``."""
    return create_supervised_evaluator(
        model,
        metrics={"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)},
        device=device,
        model_fn=forward_fn(precision, device),
    )
