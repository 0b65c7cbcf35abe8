"""TensorBoard logging: everything a run shows in TensorBoard, written in its run directory.

Through Ignite's ``TensorboardLogger`` (a tensorboardX writer). What lands where:

* Scalars: ``train/loss`` every iteration; ``train/lr/group_0``; per epoch ``epoch/<key>`` for
  the four values of the logging dictionary (``history.json``), ``time/epoch_seconds`` and
  ``time/samples_per_second`` (training only) and ``time/validation_seconds``.
* Images: ``train/samples`` (a grid of training images, once, when a run starts) and, every
  ``images_every`` epochs and at the last, ``val/confusion_matrix`` and ``val/misclassified``.
* Text: ``run/config`` (the resolved configuration) and ``run/environment`` (versions, device).
* HParams: the configuration with ``hparams/best_val_acc`` and ``hparams/best_val_loss``.
* Histograms (``histograms=True``): ``weights/<layer>`` and ``grads/<layer>`` with their norms
  ``weights_norm/<layer>`` and ``grads_norm/<layer>``, through Ignite's handlers.

Every step is the global iteration: per-epoch values sit at the iteration that ends the epoch.
Nothing new runs per training iteration except the histograms' event filter when they are on.
"""

from __future__ import annotations

import json
import platform
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.tensorboard_logger import (
    GradsHistHandler,
    GradsScalarHandler,
    TensorboardLogger,
    WeightsHistHandler,
    WeightsScalarHandler,
)
from torch import nn

from ignite_mlp.config.constraints import loss_is_nan
from ignite_mlp.handlers.history import History
from ignite_mlp.handlers.tensorboard.events import add_image, add_scalar, write_hparams, write_synchronously
from ignite_mlp.handlers.tensorboard.images import ValidationImages, sample_grid


@dataclass(frozen=True)
class TensorboardView:
    """What one run shows in TensorBoard, beyond its engines: where the events go, the run's
    resolved state that the tags need, and what to log. ``train()`` makes one from its spec.

    * ``classes``: with an evaluator, the confusion matrix (Ignite's ``ConfusionMatrix`` on
      ``device``) every ``images_every`` epochs and at the last (0: never); with
      ``normalization`` (mean, std) also a grid of misclassified validation images.
    * ``train_samples`` (uint8 images and labels) and ``classes``: a grid of training images at
      step 0, when the run starts fresh.
    * ``histograms``: weight and gradient histograms and norms per layer, at each epoch's last
      iteration (with a model).
    * ``hparams``: the HParams entry, written when training ends (see :func:`write_hparams`).
    * ``text``: ``{tag: markdown}`` entries written when training starts.
    * ``processes``: how many ranks train (on rank 0, the only one that logs); samples per
      second count all of them, each rank's batches being equal in size.
    * ``lr_per_iteration``: the learning rate every iteration (a schedule that moves within
      epochs), else at each epoch's first.
    * ``purge_step``: on resume, the checkpoint's iteration + 1 (see :func:`attach_tensorboard`).
    """

    log_dir: str | Path
    classes: Sequence[str] | None = None
    normalization: tuple[Sequence[float], Sequence[float]] | None = None
    device: torch.device | str = "cpu"
    images_every: int = 1
    train_samples: tuple[torch.Tensor, torch.Tensor] | None = None
    histograms: bool = False
    hparams: Mapping[str, Any] | None = None
    text: Mapping[str, str] | None = None
    processes: int = 1
    lr_per_iteration: bool = False
    purge_step: int | None = None


def attach_tensorboard(
    trainer: Engine,
    optimizer: torch.optim.Optimizer,
    history: History,
    view: TensorboardView,
    evaluator: Engine | None = None,
    model: nn.Module | None = None,
) -> TensorboardLogger:
    """Log a run to TensorBoard in ``view.log_dir`` (see the module docstring for the tags).

    Always: ``train/loss``, ``train/lr/group_<i>``, the four ``epoch/<key>`` values of ``history``
    and the epoch timings; the rest as :class:`TensorboardView` says (images need the
    ``evaluator``, histograms the ``model``).

    Attach after ``history`` and before the last checkpoint: the epoch's events are flushed to
    disk before the checkpoint that covers them, and ``view.purge_step`` hides anything a killed
    run logged after its checkpoint, so no step is ever duplicated. This session's start entries
    (text) go at ``purge_step`` for the same reason.
    """
    # Event files are named by the second they were opened; a resumed run's file gets a suffix
    # that sorts after the original's, so even a resume within the same second appends a new
    # file (tensorboardX opens with "wb") and TensorBoard reads the purge in the right order.
    purge_step = view.purge_step
    tb = TensorboardLogger(log_dir=str(view.log_dir), purge_step=purge_step, filename_suffix=f".{purge_step or 0:012d}")
    writer = tb.writer
    write_synchronously(writer)
    _attach_lr(trainer, optimizer, writer, view.lr_per_iteration)
    _attach_start_entries(trainer, writer, purge_step or 0, view.text, view.train_samples, view.classes)
    images = None
    if evaluator is not None and view.classes and view.images_every > 0:
        images = ValidationImages(trainer, evaluator, view.classes, view.images_every, view.normalization, view.device)
    if model is not None and view.histograms:
        attach_histograms(tb, trainer, model)
    EpochScalars(writer, history, evaluator, images, view.processes).attach(trainer)
    trainer.add_event_handler(Events.COMPLETED, lambda _: writer.flush())
    if view.hparams is not None:
        _attach_hparams(trainer, history, view.log_dir, view.hparams)
    return tb


def _attach_hparams(trainer: Engine, history: History, log_dir: str | Path, hparams: Mapping[str, Any]) -> None:
    """The HParams entry, with the best validation metrics, when training ends."""

    def log_hparams(engine: Engine) -> None:
        best = best_metrics(history)
        if best:
            write_hparams(log_dir, hparams, best, engine.state.iteration, session_status(engine))

    trainer.add_event_handler(Events.COMPLETED, log_hparams)


def _attach_lr(trainer: Engine, optimizer: torch.optim.Optimizer, writer: Any, per_iteration: bool) -> None:
    """``train/lr/group_<i>`` at each epoch's first iteration, or every iteration (``per_iteration``).

    Not Ignite's OptimizerParamsHandler: on EPOCH_STARTED its step is the epoch number.
    """

    def log_lr(step: int) -> None:
        for i, group in enumerate(optimizer.param_groups):
            writer.add_scalar(f"train/lr/group_{i}", float(group["lr"]), step)

    if per_iteration:
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda engine: log_lr(engine.state.iteration))
        return

    def log_epoch_lr(engine: Engine) -> None:
        # At the epoch's first iteration; not again when a resume restarts an epoch midway,
        # since the session that began the epoch logged it and its step was not purged.
        if engine.state.iteration % engine.state.epoch_length == 0:
            log_lr(engine.state.iteration + 1)

    trainer.add_event_handler(Events.EPOCH_STARTED, log_epoch_lr)


def _attach_start_entries(
    trainer: Engine,
    writer: Any,
    start_step: int,
    text: Mapping[str, str] | None,
    train_samples: tuple[torch.Tensor, torch.Tensor] | None,
    classes: Sequence[str] | None,
) -> None:
    """The text entries (at ``start_step``: a resumed session's are not purged) and, on a fresh
    run, the grid of training samples at step 0, written when training starts."""

    def log_start(engine: Engine) -> None:
        for tag, markdown in (text or {}).items():
            writer.add_text(tag, markdown, start_step)
        if train_samples is not None and classes and engine.state.iteration == 0:
            add_image(writer, "train/samples", sample_grid(*train_samples, classes), 0)
        writer.flush()

    trainer.add_event_handler(Events.STARTED, log_start)


class EpochScalars:
    """Per-iteration losses and the per-epoch values: the history, timings, validation images.

    The losses are copied into one preallocated tensor and written in one burst per epoch: one
    device-to-host copy for the epoch instead of a GPU sync per step for ``.item()``. (Not a list
    of each step's loss tensor: thousands of small objects kept for an epoch, interleaved with
    each step's freed activations, pinned glibc's heap: 1.2 GB more over one epoch of 7,813 steps.)
    """

    def __init__(
        self,
        writer: Any,
        history: History,
        evaluator: Engine | None,
        images: ValidationImages | None,
        processes: int,
    ) -> None:
        self.writer, self.history, self.evaluator, self.images = writer, history, evaluator, images
        self.processes = processes
        self.losses: torch.Tensor | None = None  # this epoch's losses so far: the first `kept`
        self.kept = 0
        self.first_step = 0  # the iteration of losses[0]
        self.samples = 0  # training samples seen this epoch, for samples per second

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self.start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.keep_loss)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)
        trainer.add_event_handler(Events.TERMINATE, self.write_losses)  # a run stopped mid-epoch

    def start_epoch(self, engine: Engine) -> None:
        self.samples = 0

    def keep_loss(self, engine: Engine) -> None:
        loss = engine.state.output["loss"].detach()
        if self.losses is None or self.kept == len(self.losses) or self.losses.device != loss.device:
            grown = torch.empty(max(engine.state.epoch_length or 1, 2 * self.kept, 1), device=loss.device)
            if self.losses is not None and self.kept:
                grown[: self.kept] = self.losses[: self.kept].to(loss.device)
            self.losses = grown
        if self.kept == 0:
            self.first_step = engine.state.iteration
        self.losses[self.kept] = loss  # a copy on the device, no sync and no new object kept
        self.kept += 1
        self.samples += len(engine.state.output["y"])  # a shape, no device sync

    def write_losses(self, engine: Engine) -> None:
        if self.kept and self.losses is not None:
            values = self.losses[: self.kept].cpu().tolist()
            for step, value in enumerate(values, start=self.first_step):
                add_scalar(self.writer, "train/loss", value, step)
            self.kept = 0
        self.writer.flush()

    def log_epoch(self, engine: Engine) -> None:
        step, writer = engine.state.iteration, self.writer
        self.write_losses(engine)
        for key, value in self.history.latest().items():
            writer.add_scalar(f"epoch/{key}", value, step)
        # Ignite's timer: this epoch's training iterations (and EPOCH_STARTED handlers), this
        # session only on a resumed epoch, which is what ``samples`` counts too.
        seconds = engine.state.times[Events.EPOCH_COMPLETED.name] or 0.0
        writer.add_scalar("time/epoch_seconds", seconds, step)
        if seconds > 0:
            writer.add_scalar("time/samples_per_second", self.samples * self.processes / seconds, step)
        evaluator = self.evaluator
        if evaluator is not None and evaluator.state.times.get(Events.EPOCH_COMPLETED.name):
            # The evaluator's pass and metrics, without its COMPLETED handlers (the best checkpoint).
            writer.add_scalar("time/validation_seconds", evaluator.state.times[Events.EPOCH_COMPLETED.name], step)
        if self.images is not None:
            self.images.log(writer, step)
        writer.flush()


# ----------------------------------------------------------------------------- histograms


def _epoch_end(engine: Engine, iteration: int) -> bool:
    # True at each epoch's last iteration, also in a resumed run (iterations count globally).
    return iteration % engine.state.epoch_length == 0


def attach_histograms(tb: TensorboardLogger, trainer: Engine, model: nn.Module) -> None:
    """Weight and gradient histograms and norms per parameter, through Ignite's handlers, at
    each epoch's last iteration: the step is the global iteration like every other tag, and
    the gradients are that iteration's, still in ``.grad`` after the optimiser step."""
    event = Events.ITERATION_COMPLETED(event_filter=_epoch_end)
    for handler in (WeightsHistHandler, GradsHistHandler, WeightsScalarHandler, GradsScalarHandler):
        tb.attach(trainer, handler(model), event)


# ----------------------------------------------------------------------------- text


def environment(device: torch.device | str) -> dict[str, str]:
    """Versions and the device, for the ``run/environment`` text entry."""
    import ignite
    import tensorboardX

    from ignite_mlp.version import __version__

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "ignite_mlp": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch-ignite": ignite.__version__,
        "tensorboardX": tensorboardX.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda or "none",
        "device": f"{device} ({name})",
        "platform": platform.platform(),
        "host": socket.gethostname(),
    }


def run_text(run_info: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """The ``run/config`` (indented JSON, a Markdown code block) and ``run/environment`` (a
    Markdown table) text entries."""
    config = "\n".join("    " + line for line in json.dumps(run_info, indent=2).splitlines())
    table = "| | |\n| --- | --- |\n" + "\n".join(f"| {key} | {value} |" for key, value in env.items())
    return {"run/config": config, "run/environment": table}


# ----------------------------------------------------------------------------- HParams


def best_metrics(history: History) -> dict[str, float]:
    """The best validation accuracy (percent) and loss over all epochs so far (not the last)."""
    acc, loss = history.values["val_acc_epoch"], history.values["val_loss"]
    return {"hparams/best_val_acc": max(acc), "hparams/best_val_loss": min(loss)} if acc else {}


def write_test_hparams(
    log_dir: str | Path,
    hparams: Mapping[str, Any],
    history: History,
    trainer: Engine,
    test_acc: float,
    test_loss: float,
) -> Path:
    """The run's HParams entry again, now with the test split's one evaluation (--val-split)."""
    metrics = {**best_metrics(history), "hparams/test_acc": test_acc, "hparams/test_loss": test_loss}
    return write_hparams(log_dir, hparams, metrics, trainer.state.iteration, session_status(trainer))


def session_status(trainer: Engine) -> str:
    """How the training session ended, in the HParams plugin's terms."""
    state = trainer.state
    if loss_is_nan(state.output):
        return "STATUS_FAILURE"  # stopped by a NaN loss
    if state.epoch_length and state.iteration >= state.epoch_length * state.max_epochs:
        return "STATUS_SUCCESS"
    return "STATUS_UNKNOWN"  # interrupted: a resume may finish it
