"""Continuing a run from its newest checkpoint: the one object that knows what a checkpoint holds.

A :class:`Resume` is made when the run is planned (so a missing or corrupt checkpoint fails
before any data is read), checks the model against the saved weights once the model exists, and
restores everything else into the engines and handlers before anything is written.

The checkpointable pieces of a run's state (its random generators, its epoch's training metrics)
and their restoring live here too: what a checkpoint holds is this module's job alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, EMAHandler
from ignite.metrics import Metric
from torch import nn

from ignite_mlp import checkpoint_names
from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.config.validation import flag
from ignite_mlp.data.dataset import Dataset
from ignite_mlp.data.identity import data_change
from ignite_mlp.engine.precision import recorded_precision
from ignite_mlp.errors import UserError
from ignite_mlp.handlers.controls import restore_ema
from ignite_mlp.handlers.ignite_compat import metric_device, saved_filenames
from ignite_mlp.run.checkpoint_io import check_model_shapes, refuse_non_finite, safe_load
from ignite_mlp.run.rundir import RunDir

# Restored only when they still apply (see restore_controls); everything else must be there.
CONTROLS = ("lr_scheduler", "early_stopping", "ema_model")
# What a checkpoint must hold for a run to continue from it.
REQUIRED = ("model", "optimizer", "trainer", "train_metrics", "history", "random", "best_checkpoint")
# Changes a resumed run cannot honour: the data, the batches, the model's inputs and layers.
# (--hidden-sizes is caught by the model-shape check, which names the layers that differ.)
FIXED = (
    "data",
    "batch_size",
    "epoch_length",
    "dry_run",
    "overfit_batches",
    "val_split",
    "normalize",
    "mean",
    "std",
    "norm",
    "activation",
    "recipe",
    "whiten",
    "whiten_regularizer",
    # The optimizer's kind and its parameter groups: its saved state fits no other.
    "optimizer",
    "decay_norms",
)
# Optimizer settings: the checkpoint's optimizer state brings back the old values, so the new
# ones are set again after it is restored.
OPTIMIZER = {"lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay", "nesterov": "nesterov"}
# Changing these (or --epochs) lays the learning-rate schedule out afresh.
SCHEDULE = ("lr", "lr_schedule", "lr_step_epochs", "lr_gamma", "epochs")
# How a run is run, not what it learns: not reported as changes.
NOT_CHANGES = ("run_dir", "resume", "overwrite", "progress", "cache_dir", "download", "handlers", "device")


class Resume:
    """The newest checkpoint of ``run_dir``, read (safely) and ready to restore."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run = RunDir(run_dir)
        self.checkpoint: Path = self.run.latest_checkpoint()  # type: ignore[assignment]
        self.saved: dict[str, Any] = safe_load(self.checkpoint)
        trainer = self.saved.get("trainer", {})
        try:
            self.iteration = int(trainer.get("iteration", 0))
            self.epoch_length = int(trainer.get("epoch_length") or 1)
        except (AttributeError, TypeError, ValueError):
            raise UserError(
                f"{self.checkpoint}: its trainer state is damaged; resume from another checkpoint"
            ) from None
        # What the run's configuration says it was trained with (absent when a Python caller
        # made the config by hand): the base that the changes of this resume are measured against.
        self.trained_with = self.run.read_config().values if self.run.is_run() else {}
        if self.trained_with.get("precision") == "auto":  # recorded before precision was resolved into it
            self.trained_with["precision"] = recorded_precision(self.trained_with, "auto").name
        self.changes: dict[str, tuple[Any, Any]] = {}

    def check(self, config: TrainConfig, max_epochs: int, processes: int) -> None:
        """Refuse, before anything is read or written, a resume that cannot do what it is asked:
        a checkpoint that lacks part of the run's state, a run already finished, a change the
        run cannot honour, a different process count in the middle of an epoch."""
        missing = [k for k in REQUIRED if k not in self.saved]
        if missing:
            raise UserError(
                f"{self.checkpoint}: checkpoint lacks {missing}; it was not written by this version of ignite_mlp"
            )
        damaged = [k for k in REQUIRED if not isinstance(self.saved[k], Mapping)]
        if damaged:
            raise UserError(f"{self.checkpoint}: {damaged[0]} is damaged (not a state); resume from another checkpoint")
        if config.lr == "auto":
            raise UserError(
                f"--resume {self.run_dir}: --lr auto finds a rate for a new run; a resumed run keeps its own "
                f"(--lr {self.trained_with.get('lr', '?')}): drop --lr auto or pass another number"
            )
        self.changes = {
            k: (self.trained_with[k], v)
            for k, v in config.to_dict().items()
            if k in self.trained_with and k not in NOT_CHANGES and self.trained_with[k] != v
        }
        # With --val-split the seed also drew the held-out images: another seed would validate on
        # images the run already trained on.
        fixed_here = (*FIXED, "seed") if self.trained_with.get("val_split") else FIXED
        fixed = {k: v for k, v in self.changes.items() if k in fixed_here}
        if fixed:
            what = ", ".join(f"{flag(k)} {old} -> {new}" for k, (old, new) in fixed.items())
            flags, them = ("those flags", "them") if len(fixed) > 1 else ("that flag", "it")
            raise UserError(
                f"--resume {self.run_dir}: cannot change {what} in a run already under way; "
                f"drop {flags}, or start a new run with {them}"
            )
        epoch, mid_epoch = divmod(self.iteration, self.epoch_length)
        if epoch >= max_epochs and not mid_epoch:
            raise UserError(
                f"--resume {self.run_dir}: the run already finished {epoch} epochs; "
                f"pass --epochs N with N > {epoch} to train further"
            )
        saved_processes = _processes(self.saved.get("train_metrics", {}))
        if mid_epoch and saved_processes not in (None, processes):
            raise UserError(
                f"this checkpoint was written mid-epoch by {saved_processes} process(es) and this run has "
                f"{processes}: resume it with --nproc-per-node {saved_processes} (or as many torchrun processes)"
            )

    def check_data(self, dataset: Dataset) -> None:
        """Refuse data other than the run's (its recorded fingerprint), saying what changed: a resumed
        run must see the images it trained on (with --val-split, a split drawn again from other
        images would validate on images it trained on)."""
        change = data_change(self.trained_with, dataset)
        if change is not None:
            raise UserError(
                f"--resume {self.run_dir}: the data changed since the run started ({change}); restore the data "
                f"it trained on ({self.trained_with.get('data')}), or start a new run on this data"
            )

    def handler_note(self, config: TrainConfig) -> str | None:
        """One line when the run had handlers that this resume does not attach: a run directory
        is not trusted to name code to run, so they are attached only when named again."""
        had = self.trained_with.get("handlers") or []
        left = [spec for spec in had if isinstance(spec, str) and spec not in config.handlers]
        if not left:
            return None
        again = " ".join(f"--handler {spec}" for spec in left)
        return (
            f"the run had handlers {', '.join(left)}, not attached on resume (a run's files never choose code to "
            f"run); to re-attach them, name them again: {again}"
        )

    def describe_changes(self) -> str | None:
        """One line: what this resume changes, or None when nothing."""
        if not self.changes:
            return None
        return "changed on resume: " + ", ".join(f"{flag(k)} {old} -> {new}" for k, (old, new) in self.changes.items())

    def record(self) -> None:
        """Add this resume (when, from which checkpoint, what changed) to the run's ``resumes.json``."""
        history = self.run.read_resumes()
        history.append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "checkpoint": self.checkpoint.name,
                "iteration": self.iteration,
                "changed": {k: [old, new] for k, (old, new) in self.changes.items()},
            }
        )
        self.run.write_resumes(history)

    @property
    def purge_step(self) -> int:
        """The first TensorBoard step after the checkpoint: what a killed run logged from there is hidden."""
        return self.iteration + 1

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose layers differ from the saved weights', naming the difference, and
        saved weights holding NaN or infinity (training on from them would stop at the first step)."""
        for key in ("model", "ema_model"):
            if key in self.saved or key == "model":
                check_model_shapes(model, self.saved.get(key, {}), self.checkpoint)
                refuse_non_finite(self.saved[key], self.checkpoint, "resume from another checkpoint or train again")

    def apply(
        self,
        to_save: Mapping[str, Any],
        best: Checkpoint,
        trainer: Engine,
        max_epochs: int,
        main: bool,
        write: Callable[[str], None],
        ema: EMAHandler | None = None,
    ) -> None:
        """Restore the run's state (``to_save``: what the last checkpoint saves) and the best-model
        tracker, drop best-model files the tracker does not know, then make this resume's
        optimizer settings and schedule take effect, and say what changed."""
        controls = {k: to_save.get(k) for k in CONTROLS}
        core = {k: v for k, v in to_save.items() if k not in CONTROLS}
        restore({**core, "best_checkpoint": best}, self.saved, self.checkpoint)
        restore_ema(ema, self.saved)  # after the model: a checkpoint without an average starts it from the model
        if main:
            remove_orphans(best, self.checkpoint.parent)
            removed = self.run.remove_stale_outputs()
            if removed:
                write(
                    f"removed {', '.join(removed)}: made from a checkpoint this resume trains past; "
                    "evaluate or export the run again when it finishes"
                )
        set_optimizer_settings(core["optimizer"], {k: new for k, (_, new) in self.changes.items() if k in OPTIMIZER})
        relaid = any(k in self.changes for k in SCHEDULE)
        note = restore_controls(
            controls["lr_scheduler"],
            controls["early_stopping"],
            self.saved,
            max_epochs,
            trainer.state.iteration,
            relaid,
        )
        write(f"resuming {self.run_dir} from {self.checkpoint.name} (epoch {trainer.state.epoch} done)")
        for line in (self.describe_changes(), note):
            if line:
                write(line)


def restore_controls(
    scheduler: Any, stopper: Any, saved: Mapping[str, Any], max_epochs: int, iteration: int, relaid: bool = False
) -> str | None:
    """Restore the LR schedule and early stopping of a resumed run, when they still apply.

    A schedule's shape depends on the run's length and base learning rate: when ``--epochs``
    changed, or the schedule or its learning rate did (``relaid``), or the schedule is new, the
    new schedule continues from the restored iteration instead of replaying the old one. A
    schedule or early stopping missing from the checkpoint starts afresh.
    """
    if stopper is not None and "early_stopping" in saved:
        stopper.load_state_dict(saved["early_stopping"])
    if scheduler is None:
        return None
    same_run = "lr_scheduler" in saved and saved.get("trainer", {}).get("max_epochs") == max_epochs
    if same_run and not relaid:
        scheduler.load_state_dict(saved["lr_scheduler"])
        return None
    scheduler.event_index = iteration
    torch_scheduler = getattr(scheduler, "lr_scheduler", None)  # Ignite's wrapper of a torch scheduler
    if torch_scheduler is not None:
        # It counts steps itself and derives each learning rate from the one in effect: that of
        # the last iteration done, from the new base value, decayed as often as it had been by then.
        torch_scheduler.last_epoch = iteration
        decays = max(iteration - 1, 0) // torch_scheduler.step_size
        for group, base in zip(torch_scheduler.optimizer.param_groups, torch_scheduler.base_lrs, strict=True):
            group["lr"] = base * torch_scheduler.gamma**decays
    return f"learning-rate schedule laid out for {max_epochs} epochs, continuing at iteration {iteration}"


def set_optimizer_settings(optimizer: torch.optim.Optimizer, settings: Mapping[str, Any]) -> None:
    """Give every parameter group these SGD settings (``{"lr": 1e-4}``; a restored state dict
    brought back the old ones), the learning rate also as the base schedules start from."""
    for group in optimizer.param_groups:
        for field_name, value in settings.items():
            group[OPTIMIZER[field_name]] = value
        if "lr" in settings and "initial_lr" in group:
            group["initial_lr"] = settings["lr"]


def _processes(train_metrics: Mapping[str, Any]) -> int | None:
    """How many processes wrote a checkpoint's training metrics (Ignite keeps one state per rank)."""
    counts = {len(per_rank) for state in train_metrics.values() for per_rank in state.values()}
    return counts.pop() if len(counts) == 1 else None


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
