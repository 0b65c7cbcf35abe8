"""The names of a run's checkpoint files, spelled once: how each kind is made and how a name is read.

Ignite's ``Checkpoint`` names a file ``<prefix>_<name>_<step>[_<score_name>=<score>].pt``, where
``<name>`` is ``model`` for one object and ``checkpoint`` for several:

- ``best_model_<epoch>_val_acc=<percent>.pt``: the best model's weights;
- ``last_checkpoint_<iteration>.pt``: the whole training state at an epoch's end;
- ``interrupted_checkpoint_<iteration>.pt``: the same, where Ctrl-C stopped a run mid-epoch.

Everything that makes, finds or parses these names uses this module (a test greps for the
patterns elsewhere). Imports nothing of the package.

>>> best_epoch("best_model_48_val_acc=51.4900.pt"), best_epoch("last_checkpoint_196.pt")
(48, None)
>>> resumable("interrupted_checkpoint_250.pt"), resumable("best_model_1_val_acc=9.0000.pt")
((250, True), None)
"""

from __future__ import annotations

import re

BEST = "best"
LAST = "last"
INTERRUPTED = "interrupted"
# What Ignite's Checkpoint scores the best model by, and so writes into its name.
SCORE_NAME = "val_acc"

_BEST = re.compile(rf"^{BEST}_model_(\d+)_{SCORE_NAME}=(-?\d+(?:\.\d+)?)\.pt$")
_RESUMABLE = re.compile(rf"^({LAST}|{INTERRUPTED})_checkpoint_(\d+)\.pt$")


def pattern(prefix: str) -> str:
    """The glob of every file of one kind: ``pattern(LAST) == "last_*.pt"``."""
    return f"{prefix}_*.pt"


def best_epoch(name: str) -> int | None:
    """The epoch in a best model's file name, or None for another name."""
    match = _BEST.match(name)
    return int(match.group(1)) if match else None


def best_score(name: str) -> float | None:
    """The validation accuracy in a best model's file name, or None for another name."""
    match = _BEST.match(name)
    return float(match.group(2)) if match else None


def resumable(name: str) -> tuple[int, bool] | None:
    """(iteration, written by Ctrl-C mid-epoch?) of a checkpoint a run can resume from, or None."""
    match = _RESUMABLE.match(name)
    return (int(match.group(2)), match.group(1) == INTERRUPTED) if match else None
