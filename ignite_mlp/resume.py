"""Continuing a run from its newest checkpoint: the one object that knows what a checkpoint holds.

A :class:`Resume` is made when the run is planned (so a missing or corrupt checkpoint fails
before any data is read), checks the model against the saved weights once the model exists, and
restores everything else into the engines and handlers before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from ignite.handlers import Checkpoint
from torch import nn

from ignite_mlp.checkpoints import check_model_shapes, latest_checkpoint, remove_orphans, restore, safe_load
from ignite_mlp.errors import UserError

# Restored only when they still apply (see restore_controls); everything else must be there.
CONTROLS = ("lr_scheduler", "early_stopping")


class Resume:
    """The newest checkpoint of ``run_dir``, read (safely) and ready to restore."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.checkpoint: Path = latest_checkpoint(run_dir)  # type: ignore[assignment]
        self.saved: dict[str, Any] = safe_load(self.checkpoint)
        self.iteration = int(self.saved.get("trainer", {}).get("iteration", 0))

    @property
    def purge_step(self) -> int:
        """The first TensorBoard step after the checkpoint: what a killed run logged from there is hidden."""
        return self.iteration + 1

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose layers differ from the saved weights', naming the difference."""
        check_model_shapes(model, self.saved.get("model", {}), self.checkpoint)

    def apply(
        self,
        to_save: Mapping[str, Any],
        best: Checkpoint,
        trainer: Engine,
        max_epochs: int,
        epoch_length: int,
        main: bool,
        write: Callable[[str], None],
    ) -> None:
        """Restore the run's state (``to_save``: what the last checkpoint saves) and the best-model
        tracker, drop best-model files the tracker does not know, and refuse a run that already
        finished."""
        controls = {k: to_save.get(k) for k in CONTROLS}
        core = {k: v for k, v in to_save.items() if k not in CONTROLS}
        restore({**core, "best_checkpoint": best}, self.saved, self.checkpoint)
        if main:
            remove_orphans(best, self.checkpoint.parent)
        note = restore_controls(
            controls["lr_scheduler"], controls["early_stopping"], self.saved, max_epochs, trainer.state.iteration
        )
        if note:
            write(note)
        if trainer.state.epoch >= max_epochs and trainer.state.iteration % epoch_length == 0:
            raise UserError(
                f"--resume {self.run_dir}: the run already finished {trainer.state.epoch} epochs; "
                f"pass --epochs N with N > {trainer.state.epoch} to train further"
            )
        write(f"resuming {self.run_dir} from {self.checkpoint.name} (epoch {trainer.state.epoch} done)")


def restore_controls(
    scheduler: Any, stopper: Any, saved: Mapping[str, Any], max_epochs: int, iteration: int
) -> str | None:
    """Restore the LR schedule and early stopping of a resumed run, when they still apply.

    A schedule's shape depends on the run's length: when ``--epochs`` changed (or the schedule
    is new), the new schedule continues from the restored iteration instead of replaying the
    old one. A schedule or early stopping missing from the checkpoint starts afresh.
    """
    if stopper is not None and "early_stopping" in saved:
        stopper.load_state_dict(saved["early_stopping"])
    if scheduler is None:
        return None
    same_run = "lr_scheduler" in saved and saved.get("trainer", {}).get("max_epochs") == max_epochs
    if same_run:
        scheduler.load_state_dict(saved["lr_scheduler"])
        return None
    scheduler.event_index = iteration
    if hasattr(scheduler, "lr_scheduler"):  # Ignite's wrapper of a torch scheduler counts steps itself
        scheduler.lr_scheduler.last_epoch = iteration
    return f"learning-rate schedule laid out for {max_epochs} epochs, continuing at iteration {iteration}"
