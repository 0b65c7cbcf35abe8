"""Restoring checkpoints, so a run that dies loses almost nothing.

Finding them is :mod:`ignite_mlp.run.rundir`'s job, reading them (safely: ``weights_only=True``)
:mod:`ignite_mlp.run.checkpoint_io`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.metrics import Metric

from ignite_mlp import checkpoint_names
from ignite_mlp.errors import UserError
from ignite_mlp.handlers.ignite_compat import metric_device, saved_filenames


class RandomState:
    """Torch's random generators as a checkpointable object (dropout continues identically).

    In a multi-process run each rank draws its own dropout masks: every rank's generators are
    gathered (Ignite's ``Checkpoint`` asks every rank for its state, and rank 0 saves it) under
    ``"ranks"`` and ``"cuda_ranks"``, and on resume each rank takes its own back, as long as
    the number of processes is the same.
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            state["cuda"] = torch.cuda.get_rng_state_all()
        if idist.get_world_size() > 1:
            state["ranks"] = _gather_rows(torch.get_rng_state())
            if cuda:
                state["cuda_ranks"] = _gather_rows(torch.cuda.get_rng_state())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        rank, size = idist.get_rank(), idist.get_world_size()
        if "ranks" in state and len(state["ranks"]) == size:
            torch.set_rng_state(state["ranks"][rank].clone())
        if "cuda_ranks" in state and len(state["cuda_ranks"]) == size and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_ranks"][rank].clone())


def _gather_rows(own: torch.Tensor) -> torch.Tensor:
    """Every rank's ``own`` (a 1-D tensor of one length), as the rows of a CPU tensor; a collective."""
    # Ignite moves the tensor to the backend's device (a GPU for NCCL) and back.
    return idist.all_gather(own.unsqueeze(0)).cpu()  # type: ignore[union-attr]


class EpochMetricsState:
    """The trainer's running epoch metrics, so a run stopped mid-epoch resumes them exactly.

    Ignite resets metrics when an epoch starts; restoring must therefore happen just after
    that reset, once, which :meth:`load_state_dict` arranges.
    """

    def __init__(self, trainer: Engine, metrics: Mapping[str, Metric]) -> None:
        self.trainer = trainer
        self.metrics = dict(metrics)

    def state_dict(self) -> dict[str, Any]:
        return {name: metric.state_dict() for name, metric in self.metrics.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        trainer_state = self.trainer.state  # restored first: see the order in run/training.py, _resume_state
        if trainer_state.iteration % trainer_state.epoch_length == 0:
            return  # saved at an epoch's end: the next epoch starts its metrics afresh

        # Ignite keeps one metric state per rank, and a mid-epoch resume needs each rank's own:
        # Resume.check has refused a different process count before anything was restored.

        def restore(_: Engine) -> None:
            for name, metric in self.metrics.items():
                # Checkpoints load on the CPU; the metric accumulates on its own device.
                values = {k: v.to(metric_device(metric)) if torch.is_tensor(v) else v for k, v in state[name].items()}
                metric.load_state_dict(values)

        # Attached after the metrics' own EPOCH_STARTED reset, so this runs after it.
        self.trainer.add_event_handler(Events.EPOCH_STARTED(once=self.trainer.state.epoch + 1), restore)


def restore(objects: Mapping[str, Any], state: Mapping[str, Any], source: Path | None = None) -> None:
    """Load every object of a checkpoint (Ignite's ``Checkpoint.load_objects``); what the
    checkpoint must hold is checked before, by :meth:`ignite_mlp.run.resume.Resume.check`. A
    state the objects cannot take (a damaged or tampered ``source``) is a UserError."""
    try:
        Checkpoint.load_objects(to_load=dict(objects), checkpoint=dict(state))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        reason = (str(e).splitlines() or [""])[0]
        raise UserError(
            f"{source}: the run's state cannot be restored from it ({type(e).__name__}: {reason}); "
            "it is damaged: resume from another checkpoint or start a new run"
        ) from None


def remove_orphans(best: Checkpoint, dirname: Path) -> None:
    """Delete best-model files the restored tracker does not know (written after the checkpoint).

    Only while every file the tracker knows is on disk: otherwise (a run killed mid-update by
    an older version, or a file deleted by hand) an unknown file may be the only best model
    left, and it stays.
    """
    known = set(saved_filenames(best))
    if not all((dirname / name).is_file() for name in known):
        return
    for path in dirname.glob(checkpoint_names.pattern(checkpoint_names.BEST)):
        if path.name not in known:
            path.unlink()
