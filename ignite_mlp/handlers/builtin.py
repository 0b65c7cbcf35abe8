"""The event handlers this package attaches to the trainer and evaluator.

Each ``attach_*`` function (and :class:`History`) works on its own with any Ignite trainer
whose ``state.output`` is ``{"loss", "y_pred", "y"}`` and whose metrics are ``accuracy`` and
``loss`` (what :func:`ignite_mlp.engine.trainer.create_trainer` builds). Order matters in Ignite:
handlers on one event run in the order they were attached, so validation is attached
first and everything that reads validation metrics after it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import (
    Checkpoint,
    DiskSaver,
    ProgressBar,
    TerminateOnNan,
    global_step_from_engine,
)

from ignite_mlp import checkpoint_names
from ignite_mlp.files import write_json_atomic
from ignite_mlp.plots import plot_curves

# The tutorial's logging dictionary: accuracies in percent, losses as sample means.
HISTORY_KEYS = ("train_acc_epoch", "val_acc_epoch", "loss_epoch", "val_loss")


def attach_validation(trainer: Engine, evaluator: Engine, val_loader: Any, epoch_length: int | None = None) -> None:
    """Run ``evaluator`` over ``val_loader`` (or its first ``epoch_length`` batches) at the end
    of every training epoch."""

    def validate(_: Engine) -> None:
        evaluator.run(val_loader, epoch_length=epoch_length)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)


class History:
    """The logging dictionary, one value per epoch, saved as JSON after every epoch.

    It has ``state_dict``/``load_state_dict`` so a checkpoint can carry it across a resume.

    >>> h = History()
    >>> h.record({"accuracy": 0.5, "loss": 1.0}, {"accuracy": 0.25, "loss": 2.0})
    >>> h.values
    {'train_acc_epoch': [50.0], 'val_acc_epoch': [25.0], 'loss_epoch': [1.0], 'val_loss': [2.0]}
    >>> h.best_epoch(), h.best_val_acc()
    (1, 25.0)
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.values: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}

    def record(self, train_metrics: Mapping[str, float], val_metrics: Mapping[str, float]) -> None:
        self.values["train_acc_epoch"].append(100.0 * float(train_metrics["accuracy"]))
        self.values["val_acc_epoch"].append(100.0 * float(val_metrics["accuracy"]))
        self.values["loss_epoch"].append(float(train_metrics["loss"]))
        self.values["val_loss"].append(float(val_metrics["loss"]))
        if self.path is not None:
            write_json_atomic(self.path, self.values)

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        """Record at each epoch's end; attach after :func:`attach_validation`."""

        def on_epoch(engine: Engine) -> None:
            self.record(engine.state.metrics, evaluator.state.metrics)

        trainer.add_event_handler(Events.EPOCH_COMPLETED, on_epoch)

    def latest(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.values.items() if v}

    def best_epoch(self) -> int | None:
        acc = self.values["val_acc_epoch"]
        return max(range(len(acc)), key=acc.__getitem__) + 1 if acc else None

    def best_val_acc(self) -> float | None:
        return max(self.values["val_acc_epoch"], default=None)

    def state_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.values.items()}

    def load_state_dict(self, state: Mapping[str, list[float]]) -> None:
        self.values = {k: [float(x) for x in state[k]] for k in HISTORY_KEYS}


def val_accuracy(engine: Engine) -> float:
    """Score for the best checkpoint: validation accuracy in percent."""
    return round(100.0 * float(engine.state.metrics["accuracy"]), 4)


class SaveThenRemove(DiskSaver):
    """Ignite's atomic ``DiskSaver``, except that a superseded checkpoint is deleted only once
    its replacement is on disk.

    Ignite's ``Checkpoint`` asks its saver to remove the old file *before* writing the new one,
    so with ``n_saved=1`` a ``kill -9`` between the two leaves no checkpoint at all to resume
    from. Here ``remove`` only notes the file, and the next save deletes it after writing.
    With ``deferred=True`` the next save deletes nothing: :meth:`drop_superseded` does, when
    the caller says the replacement is recorded elsewhere too (see :func:`attach_checkpoints`).
    """

    def __init__(self, dirname: str | Path, deferred: bool = False, **kwargs: Any) -> None:
        super().__init__(str(dirname), require_empty=False, atomic=True, **kwargs)
        self.deferred = deferred
        self._superseded: list[str] = []

    def remove(self, filename: str) -> None:
        self._superseded.append(filename)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, filename, metadata)
        # A name written again (the same epoch and score) is current, not superseded.
        self._superseded = [old for old in self._superseded if old != filename]
        if not self.deferred:
            self.drop_superseded()

    def drop_superseded(self) -> None:
        """Delete the files superseded since the last call (rank 0 only, like every write)."""
        for old in self._superseded:
            with contextlib.suppress(FileNotFoundError):
                super().remove(old)
        self._superseded = []


def attach_checkpoints(
    trainer: Engine,
    evaluator: Engine,
    model: torch.nn.Module,
    to_save: Mapping[str, Any],
    dirname: str | Path,
) -> tuple[Checkpoint, Checkpoint]:
    """Keep the best model by validation accuracy and the last full training state.

    Best: the model's weights only; last: everything in ``to_save`` (model, optimizer, trainer,
    history, ...) plus the best-checkpoint tracker, written at each epoch's end (their names:
    :mod:`ignite_mlp.checkpoint_names`).
    Both through Ignite's ``Checkpoint`` with an atomic saver, so a crash mid-write never
    leaves a half file, and the previous file stays until its replacement is written (see
    :class:`SaveThenRemove`).

    A kill can come between any two of these writes and deletions, so they go in this order:
    the new best file, the new last checkpoint (whose tracker names that best file), then the
    superseded last and best files. Whichever last checkpoint a resume finds, the best file
    its tracker names is still on disk.
    """
    best_saver = SaveThenRemove(dirname, deferred=True)
    best = Checkpoint(
        {"model": model},
        best_saver,
        filename_prefix=checkpoint_names.BEST,
        score_function=val_accuracy,
        score_name=checkpoint_names.SCORE_NAME,
        n_saved=1,
        global_step_transform=global_step_from_engine(trainer),
    )
    evaluator.add_event_handler(Events.COMPLETED, best)
    last = Checkpoint(
        {**to_save, "best_checkpoint": best}, SaveThenRemove(dirname), filename_prefix=checkpoint_names.LAST, n_saved=1
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, last)

    def drop_superseded_best(_: Engine) -> None:
        # Only now: the last checkpoint just written is the first to name the new best file.
        best_saver.drop_superseded()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, drop_superseded_best)
    return best, last


def attach_interrupt_checkpoint(
    trainer: Engine, last: Checkpoint, should_stop: Callable[[], bool], dirname: str | Path
) -> Checkpoint:
    """When ``should_stop()`` turns true, terminate the trainer after the current iteration
    and, on its TERMINATE event, save an interrupted checkpoint (what ``last`` saves, mid-epoch).
    TERMINATE handlers attached earlier (TensorBoard's) run first, so what they write is on disk
    before the checkpoint that covers it.

    Such a checkpoint is deleted once a later epoch-end checkpoint supersedes it.
    """
    interrupted = Checkpoint(last.to_save, SaveThenRemove(dirname), filename_prefix=checkpoint_names.INTERRUPTED)

    def maybe_stop(engine: Engine) -> None:
        # Not on an epoch's last step: terminating there would skip that epoch's validation,
        # history and checkpoint; stopping one step later keeps them.
        if should_stop() and engine.state.iteration % engine.state.epoch_length:
            engine.terminate()

    def save(engine: Engine) -> None:
        if should_stop():  # not when TerminateOnNan ended the run: those weights are NaN
            interrupted(engine)

    def drop_superseded(engine: Engine) -> None:
        if idist.get_rank() != 0:  # like Ignite's saver: only rank 0 touches the files
            return
        # A fresh epoch-end checkpoint supersedes interrupted ones and a resumed run's old "last".
        for path in Path(dirname).glob(checkpoint_names.pattern(checkpoint_names.INTERRUPTED)):
            path.unlink()
        current = Path(last.last_checkpoint).name if last.last_checkpoint else None
        for path in Path(dirname).glob(checkpoint_names.pattern(checkpoint_names.LAST)):
            if path.name != current:
                path.unlink()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, maybe_stop)
    trainer.add_event_handler(Events.TERMINATE, save)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, drop_superseded)
    return interrupted


class EverySeconds:
    """An Ignite event filter that lets an event through when ``seconds`` have passed since it
    last did (and the first time).

    >>> from ignite.engine import Engine, Events
    >>> engine, seen = Engine(lambda e, b: None), []
    >>> _ = engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=EverySeconds(3600)),
    ...                              lambda e: seen.append(e.state.iteration))
    >>> _ = engine.run(range(5))
    >>> seen
    [1]
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last = -math.inf

    def __call__(self, engine: Engine, event: int) -> bool:
        now = self.clock()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True

    def __repr__(self) -> str:
        return f"every {self.seconds:g} s"


def attach_progress_bar(trainer: Engine, seconds: float = 0.25) -> ProgressBar:
    """Ignite's tqdm bar over each epoch's iterations, showing the batch loss.

    It is redrawn at most every ``seconds``: each update of Ignite's bar redraws the line
    three times (description, loss, count), about 1.3 ms here, so updating on every step
    would cost a third of a 3 ms CPU training step, and far more of a GPU's. Four updates a
    second still read as smooth progress.
    """
    bar = ProgressBar(persist=False)
    bar.attach(
        trainer,
        output_transform=lambda out: {"loss": out["loss"]},
        event_name=Events.ITERATION_COMPLETED(event_filter=EverySeconds(seconds)),
    )
    return bar


def attach_epoch_summary(
    trainer: Engine,
    history: History,
    write: Callable[[str], None] = print,
) -> None:
    """One line per epoch, like the tutorial's printout; attach after ``history``."""

    def summary(engine: Engine) -> None:
        last = history.latest()
        seconds = engine.state.times.get(Events.EPOCH_COMPLETED.name) or 0.0
        write(
            f"Epoch {engine.state.epoch:>3}/{engine.state.max_epochs}: "
            f"train loss {last['loss_epoch']:.4f} acc {last['train_acc_epoch']:.2f}% | "
            f"val loss {last['val_loss']:.4f} acc {last['val_acc_epoch']:.2f}% | {seconds:.1f}s"
        )

    trainer.add_event_handler(Events.EPOCH_COMPLETED, summary)


def attach_terminate_on_nan(trainer: Engine) -> None:
    """Stop at the first NaN or infinite training loss (Ignite's ``TerminateOnNan``)."""
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(output_transform=lambda out: out["loss"]))


def attach_curves(trainer: Engine, history: History, path: str | Path) -> None:
    """Plot ``curves.png`` once training ends (normally or by a terminate)."""

    def plot(_: Engine) -> None:
        if history.values["loss_epoch"]:
            plot_curves(history.values, path)

    trainer.add_event_handler(Events.COMPLETED, plot)
