"""Training controls on Ignite's own pieces: learning-rate schedules, early stopping, the stop on a
NaN loss, the moving average of the weights, and the package's NEW_BEST event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import (
    Checkpoint,
    CosineAnnealingScheduler,
    EarlyStopping,
    EMAHandler,
    LRScheduler,
    ParamScheduler,
    PiecewiseLinear,
    TerminateOnNan,
)
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import StepLR

from ignite_mlp.handlers.extensions import TrainEvents


def attach_lr_schedule(
    trainer: Engine,
    optimizer: Optimizer,
    schedule: str,
    lr: float,
    total_iterations: int,
    iterations_per_epoch: int,
    step_epochs: int = 0,
    gamma: float = 0.1,
) -> ParamScheduler | LRScheduler | None:
    """Attach an Ignite parameter scheduler that sets the learning rate every iteration.

    - ``step``: multiply by ``gamma`` every ``step_epochs`` epochs (default: a third of the run);
    - ``cosine``: from ``lr`` down to 0 along half a cosine over the whole run;
    - ``onecycle``: warm up linearly from lr/25 to ``lr`` over the first 30%, then down to lr/10^4.

    Returns the scheduler (its state belongs in checkpoints), or None for ``none``.
    """
    if schedule == "none":
        return None
    if schedule == "step":
        every = (step_epochs or max(1, total_iterations // iterations_per_epoch // 3)) * iterations_per_epoch
        scheduler: ParamScheduler | LRScheduler = LRScheduler(StepLR(optimizer, step_size=every, gamma=gamma))
    elif schedule == "cosine":
        scheduler = CosineAnnealingScheduler(optimizer, "lr", lr, 0.0, cycle_size=max(2, total_iterations))
    elif schedule == "onecycle":
        peak = max(1, int(0.3 * total_iterations))
        scheduler = PiecewiseLinear(
            optimizer, "lr", milestones_values=[(0, lr / 25), (peak, lr), (total_iterations, lr / 1e4)]
        )
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    trainer.add_event_handler(Events.ITERATION_STARTED, scheduler)
    return scheduler


def attach_early_stopping(trainer: Engine, evaluator: Engine, patience: int, metric: str) -> EarlyStopping | None:
    """Ignite's ``EarlyStopping`` on validation loss (lower is better) or accuracy."""
    if patience <= 0:
        return None

    def score(engine: Engine) -> float:
        value = float(engine.state.metrics["loss" if metric == "val_loss" else "accuracy"])
        return -value if metric == "val_loss" else value

    stopper = EarlyStopping(patience=patience, score_function=score, trainer=trainer)
    evaluator.add_event_handler(Events.COMPLETED, stopper)
    return stopper


def attach_new_best_event(trainer: Engine, evaluator: Engine, best: Checkpoint) -> None:
    """Fire ``TrainEvents.NEW_BEST`` on the trainer whenever ``best`` has just saved a new file.

    Attach after ``best`` on the evaluator, so the new checkpoint is already on disk.
    """
    trainer.register_events(*TrainEvents)
    seen: dict[str, str | None] = {"last": None}

    def remember(_: Engine) -> None:
        # At STARTED, after any resume restored the tracker: a restored best is not new.
        seen["last"] = best.last_checkpoint

    def check(_: Engine) -> None:
        if best.last_checkpoint != seen["last"]:
            seen["last"] = best.last_checkpoint
            trainer.fire_event(TrainEvents.NEW_BEST)

    trainer.add_event_handler(Events.STARTED, remember)
    evaluator.add_event_handler(Events.COMPLETED, check)


def attach_ema(trainer: Engine, model: nn.Module, momentum: float) -> EMAHandler | None:
    """Ignite's ``EMAHandler``: after every training step, ``ema = (1 - momentum) * ema + momentum *
    weights`` (batch-norm statistics averaged alike). Returns it (its ``ema_model`` is what to
    validate and checkpoint), or None when ``momentum`` is 0."""
    if momentum <= 0:
        return None
    ema = EMAHandler(model, momentum=momentum, handle_buffers="update")
    ema.attach(trainer, name="ema_momentum", warn_if_exists=False)  # a resumed trainer has it already
    return ema


def restore_ema(ema: EMAHandler | None, saved: Mapping[str, Any]) -> None:
    """Load a resumed run's averaged weights; a checkpoint without them (the average newly
    turned on) starts the average from the restored weights. Call after the model is restored."""
    if ema is None:
        return
    ema.ema_model.load_state_dict(saved["ema_model"] if "ema_model" in saved else ema.model.state_dict())


def attach_terminate_on_nan(trainer: Engine) -> None:
    """Stop at the first NaN or infinite training loss (Ignite's ``TerminateOnNan``)."""
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=lambda out: out["loss"]))
