"""Ignite's supervised trainer and evaluator, with the metrics the logging dictionary needs.

Training accuracy and loss are Ignite metrics attached to the *trainer*, fed by the logits
each training step already computed: no second pass over the training set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss
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


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    precision: str = "fp32",
) -> Engine:
    """Ignite's supervised trainer; ``state.output`` is ``{"loss", "y_pred", "y"}`` and
    ``state.metrics`` holds this epoch's ``accuracy`` (fraction) and mean ``loss``."""
    trainer = create_supervised_trainer(
        model,
        optimizer,
        loss_fn,
        device=device,
        output_transform=_step_output,
        model_fn=forward_fn(precision, device),
    )
    Accuracy(output_transform=_logits_and_labels, device=device).attach(trainer, "accuracy")
    Loss(loss_fn, output_transform=_logits_and_labels, device=device).attach(trainer, "loss")
    return trainer


def create_evaluator(model: nn.Module, loss_fn: nn.Module, device: torch.device, precision: str = "fp32") -> Engine:
    """Ignite's supervised evaluator with ``accuracy`` (fraction) and sample-mean ``loss``."""
    return create_supervised_evaluator(
        model,
        metrics={"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)},
        device=device,
        model_fn=forward_fn(precision, device),
    )
