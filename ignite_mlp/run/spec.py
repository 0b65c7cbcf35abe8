"""A run's :class:`RunSpec`: every setting resolved, once, at start-up, and read by everything after.

A :class:`~ignite_mlp.config.train_config.TrainConfig` says what the user asked for, "auto" and
all; the spec says what the run does: the learning rate as a number, the normalisation the
loaders apply, the precision on this machine, the progress display, how many epochs and batches.
Some of it needs the data (the training set's statistics, the learning-rate finder), so the
spec is made once those are known, by :func:`resolve_spec`; the dry-run rule lives here alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.distributed import ranks

if TYPE_CHECKING:  # (plan.py reads the dry-run rule from here)
    from ignite_mlp.run.plan import RunPlan
    from ignite_mlp.run.prepare import RunData

# --dry-run: one epoch of this many training batches, then this many validation batches.
DRY_RUN_BATCHES = 2


def run_epochs(config: TrainConfig) -> int:
    """How many epochs ``config`` trains: ``--epochs``, or one with ``--dry-run``.

    >>> run_epochs(TrainConfig(epochs=7)), run_epochs(TrainConfig(epochs=7, dry_run=True))
    (7, 1)
    """
    return 1 if config.dry_run else config.epochs


@dataclass(frozen=True)
class RunSpec:
    """What a run does, every "auto" resolved. Made once by :func:`resolve_spec`; never changed.

    >>> spec = RunSpec(TrainConfig(), "fp32", "--precision fp32", torch.device("cpu"), "off", 3, 5, None)
    >>> spec.precision, spec.main, spec.distributed
    ('fp32', True, False)
    """

    # The config as the run uses it: lr a number, mean and std the loaders' own (measured with
    # --normalize dataset), precision "fp32" or "bf16".
    config: TrainConfig
    precision: str
    # Why that precision: printed, and kept in the run's recorded configuration.
    precision_reason: str
    device: torch.device
    # "bar", "lines" or "off" (see ignite_mlp.progress); "off" on every rank but 0.
    progress: str
    max_epochs: int
    epoch_length: int
    # Validation batches per epoch: None for all of them.
    val_batches: int | None
    whiten: bool = False
    # This process's place in the run: rank 0 (the main process) writes files and prints.
    rank: int = 0
    world_size: int = 1
    main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def total_iterations(self) -> int:
        return self.max_epochs * self.epoch_length

    def record(self) -> dict[str, Any]:
        """What the run's configuration file keeps of the spec: the config as resolved (``precision``
        the one it trains in, never "auto": everything after the run reads it from there), why that
        precision, and the device the run used.

        >>> spec = RunSpec(TrainConfig(lr=0.1, precision="fp32"), "fp32", "why", torch.device("cpu"), "off", 3, 5, None)
        >>> record = spec.record()
        >>> record["lr"], record["precision"], record["precision_reason"], record["resolved_device"]
        (0.1, 'fp32', 'why', 'cpu')
        """
        record = {
            **self.config.to_dict(),
            "resolved_device": str(self.device),
            "precision_reason": self.precision_reason,
        }
        if self.distributed:
            record["world_size"] = self.world_size
        return record


def resolve_spec(plan: RunPlan, data: RunData, lr: float | str) -> RunSpec:
    """The spec of a run planned as ``plan`` on ``data``, trained at the learning rate ``lr``
    (``--lr auto`` already resolved to a number)."""
    config = plan.config
    resolved = dataclasses.replace(data.normalized(config), lr=float(lr), precision=plan.precision.name)
    dry = config.dry_run
    return RunSpec(
        config=resolved,
        precision=plan.precision.name,
        precision_reason=plan.precision.reason,
        device=plan.device,
        progress=plan.progress,
        max_epochs=run_epochs(config),
        epoch_length=DRY_RUN_BATCHES if dry else (config.epoch_length or len(data.train_loader)),
        val_batches=DRY_RUN_BATCHES if dry else None,
        whiten=data.whitening is not None,
        rank=ranks.rank(),
        world_size=ranks.world_size(),
        main=plan.main,
    )
