"""Beginner guardrails: the tutorial's advice, printed once when a run breaks one of its rules.

Each check returns or writes a message that says what was seen and *why* it matters, so the
user learns the reason, not just the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from ignite.engine import Engine, Events

from ignite_mlp.handlers.history import History

Write = Callable[[str], None]


def setup_warnings(batch_size: int, hidden_sizes: Sequence[int], device: torch.device) -> list[str]:
    """Warnings about the set-up itself, known before the first step.

    (Shuffling needs no warning: the run always shuffles training batches, except in the
    overfit check where a fixed order is the point, and never shuffles validation.)

    >>> for w in setup_warnings(4, [100], torch.device("cuda")):
    ...     print(w.split(": ")[1])
    batch size 4 is below 8
    hidden sizes [100] are not multiples of 32 on a GPU
    """
    warnings = []
    if batch_size < 8:
        warnings.append(
            f"warning: batch size {batch_size} is below 8: each step's gradient then rests on a handful of "
            "images and is very noisy; the tutorial uses 256"
        )
    if device.type == "cuda" and any(h % 32 for h in hidden_sizes):
        warnings.append(
            f"warning: hidden sizes {list(hidden_sizes)} are not multiples of 32 on a GPU: its matrix units "
            "work on tiles, and ragged widths leave part of each tile idle"
        )
    return warnings


def attach_initial_loss_check(trainer: Engine, num_classes: int, write: Write, tolerance: float = 0.5) -> None:
    """After the first step, compare its loss with ln(num_classes), what guessing uniformly gives."""
    expected = math.log(num_classes)

    def check(engine: Engine) -> None:
        loss = float(engine.state.output["loss"])
        if math.isfinite(loss) and abs(loss - expected) > tolerance * expected:
            write(
                f"warning: the first loss is {loss:.3f}, far from ln({num_classes}) = {expected:.3f}, the loss of an "
                "untrained model that guesses uniformly: check the labels, the input normalisation and the "
                "initialisation"
            )

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), check)


def overfitting_start(history: History, epochs: int = 3) -> int | None:
    """The epoch where validation loss began rising for ``epochs`` epochs in a row while the
    training loss fell over the same epochs, or None.

    >>> h = History()
    >>> for train, val in [(2.0, 2.0), (1.5, 1.6), (1.2, 1.7), (1.0, 1.8), (0.8, 1.9)]:
    ...     h.record({"accuracy": 0.5, "loss": train}, {"accuracy": 0.5, "loss": val})
    >>> overfitting_start(h)
    2
    """
    val, train = history.values["val_loss"], history.values["loss_epoch"]
    for start in range(len(val) - epochs):
        window = range(start, start + epochs + 1)
        rising = all(val[i + 1] > val[i] for i in window[:-1])
        falling = all(train[i + 1] < train[i] for i in window[:-1])
        if rising and falling:
            return start + 1  # history index -> epoch number of the last good epoch
    return None


def attach_overfitting_watch(trainer: Engine, history: History, write: Write, epochs: int = 3) -> None:
    """Say once, when it happens, that validation loss has been rising while training loss falls."""
    said = False

    def watch(engine: Engine) -> None:
        nonlocal said
        start = overfitting_start(history, epochs)
        if start is not None and not said:
            said = True
            write(
                f"warning: overfitting: validation loss has risen for {epochs} epochs since epoch {start} while "
                "the training loss kept falling: the model is memorising the training set; consider "
                "--patience (early stopping), --dropout or --weight-decay"
            )

    trainer.add_event_handler(Events.EPOCH_COMPLETED, watch)


def overfit_report(train_acc: float, batches: int, losses: Sequence[float] = ()) -> str:
    """The verdict of ``--overfit-batches``: memorising a few batches must reach ~100%. Short of it,
    a training loss (``losses``, one per epoch) that fell by a tenth or more and was still falling
    at the end is a model learning, slowly (the tutorial's lr 1e-3 needs far more than its 100
    steps: its loss fell from 2.29 to 1.96 on CIFAR-10): no alarm, only how to finish the check.
    A loss that did not fall, or stopped falling short of memorising, is the alarm.

    >>> overfit_report(100.0, 2)
    'overfit check passed: 100.0% training accuracy on 2 fixed batch(es)'
    >>> slow = overfit_report(33.2, 2, [2.294, 2.1, 1.959])
    >>> slow.startswith("overfit check not finished"), "loss fell from 2.294 to 1.959 and is still falling" in slow
    (True, True)
    >>> overfit_report(12.0, 2, [2.31, 2.30]).startswith("overfit check failed")
    True
    >>> overfit_report(60.0, 2, [2.3, 1.0, 1.0, 1.1]).startswith("overfit check failed")  # stuck short of it
    True
    """
    if train_acc >= 99.0:
        return f"overfit check passed: {train_acc:.1f}% training accuracy on {batches} fixed batch(es)"
    if len(losses) >= 2 and losses[-1] <= 0.9 * losses[0] and losses[-1] < min(losses[:-1]):
        return (
            f"overfit check not finished: {train_acc:.1f}% training accuracy on {batches} fixed batch(es), but the "
            f"loss fell from {losses[0]:.3f} to {losses[-1]:.3f} and is still falling; the model is learning, slowly: "
            f"train longer (--epochs {10 * len(losses)}) or faster (a higher --lr, e.g. 0.05) to see it reach ~100%"
        )
    return (
        f"overfit check failed: only {train_acc:.1f}% training accuracy on {batches} fixed batch(es); a "
        "working model memorises a few batches easily, so suspect a bug: labels that do not match the "
        "images, a learning rate far too low or high, or a loss that gets the wrong inputs; "
        "or train longer (--epochs)"
    )
