"""The run's record of its epochs: validation on the evaluator after each training epoch, the
tutorial's logging dictionary (:class:`History`, ``history.json``) and its curves (``curves.png``).

Each works on its own with any Ignite trainer whose metrics are ``accuracy`` and ``loss`` (what
:func:`ignite_mlp.engine.trainer.create_trainer` builds). Handlers on one event run in the order
they were attached, so validation is attached first and everything that reads its metrics after.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

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


def attach_curves(trainer: Engine, history: History, path: str | Path) -> None:
    """Plot ``curves.png`` once training ends (normally or by a terminate)."""

    def plot(_: Engine) -> None:
        if history.values["loss_epoch"]:
            plot_curves(history.values, path)

    trainer.add_event_handler(Events.COMPLETED, plot)
