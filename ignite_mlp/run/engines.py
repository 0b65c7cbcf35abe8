"""Phase 3 of a run: the model, its optimizer, Ignite's trainer with its training metrics, the
evaluator and the Ctrl-C stop agreement, built from the run's spec and its data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import EMAHandler
from ignite.metrics import Metric
from ignite.utils import manual_seed
from torch import nn

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.distributed import ranks
from ignite_mlp.engine.optimizers import make_optimizer
from ignite_mlp.engine.trainer import attach_train_metrics, create_evaluator, create_trainer
from ignite_mlp.handlers.controls import attach_ema
from ignite_mlp.handlers.epochs import attach_epoch_shuffle
from ignite_mlp.model import MLP
from ignite_mlp.run.prepare import RunData
from ignite_mlp.run.resume import Resume
from ignite_mlp.run.spec import RunSpec


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW as the config says (see :func:`ignite_mlp.engine.optimizers.make_optimizer`)."""
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


def build_engines(spec: RunSpec, data: RunData, resume: Resume | None = None) -> Engines:
    """The model (checked against the checkpoint on a ``resume``), the optimizer, the trainer with
    its training metrics and the evaluator."""
    config, device = spec.config, spec.device
    dataset = data.dataset
    model = MLP.from_config(config, dataset.in_features, dataset.num_classes).to(device)
    if resume is not None:
        resume.check_model(model)
    # Across ranks the trainer steps a DistributedDataParallel wrapper (gradients averaged over
    # the ranks); checkpoints, validation and user handlers keep the model itself.
    stepped, optimizer = ranks.wrap(model, build_optimizer(model, config), device)
    if spec.distributed:
        # Same weights everywhere (the wrapper copied rank 0's), but each rank its own dropout.
        manual_seed((config.seed + spec.rank) % 2**32)  # numpy takes seeds below 2**32
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    trainer = create_trainer(stepped, optimizer, loss_fn, device, spec.precision)
    # --ema-momentum: validation, the best checkpoint and evaluate use the averaged weights.
    ema = attach_ema(trainer, model, config.ema_momentum)
    eval_model = ema.ema_model if ema is not None else model
    train_metrics = attach_train_metrics(trainer, device)
    stop = StopRequest()
    if spec.distributed:
        should_stop = ranks.attach_agreement(trainer, lambda: stop.requested)
    else:
        should_stop = lambda: stop.requested  # noqa: E731 - the one-process answer
    # Validation loss stays the plain cross-entropy, comparable across recipes and runs. It runs
    # the model itself, not its wrapper: no collective per batch, so validation shards may differ.
    evaluator = create_evaluator(eval_model, nn.CrossEntropyLoss(), device, config.tta)
    attach_epoch_shuffle(trainer, data.train_loader, spec.epoch_length)
    return Engines(model, optimizer, trainer, evaluator, train_metrics, stop, should_stop, ema, eval_model)
