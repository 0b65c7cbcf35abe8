"""What a run shows on the terminal while it trains: Ignite's progress bar (redrawn at most a
few times a second) and one line per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ignite.engine import Engine, Events
from ignite.handlers import (
    ProgressBar,
)

from ignite_mlp.handlers.history import History


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
    evaluator: Engine | None = None,
) -> None:
    """One line per epoch, like the tutorial's printout; attach after ``history``. The seconds are
    the training pass's and, given the ``evaluator``, its last run's (this epoch's validation):
    together they are most of an epoch's wall time, which the training pass alone understates."""

    def summary(engine: Engine) -> None:
        last = history.latest()
        seconds = engine.state.times.get(Events.EPOCH_COMPLETED.name) or 0.0
        timing = f"{seconds:.1f}s"
        if evaluator is not None:
            timing += f" + val {evaluator.state.times.get(Events.COMPLETED.name) or 0.0:.1f}s"
        write(
            f"Epoch {engine.state.epoch:>3}/{engine.state.max_epochs}: "
            f"train loss {last['loss_epoch']:.4f} acc {last['train_acc_epoch']:.2f}% | "
            f"val loss {last['val_loss']:.4f} acc {last['val_acc_epoch']:.2f}% | {timing}"
        )

    trainer.add_event_handler(Events.EPOCH_COMPLETED, summary)
