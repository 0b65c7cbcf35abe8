"""The run's checkpoints on Ignite's ``Checkpoint``: the best model by validation accuracy, the
last full training state at each epoch's end, and the interrupted state where Ctrl-C stopped a
run; written atomically, each superseded file deleted only after its replacement is on disk.
Their names: :mod:`ignite_mlp.checkpoint_names`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import (
    Checkpoint,
    DiskSaver,
    global_step_from_engine,
)

from ignite_mlp import checkpoint_names


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
