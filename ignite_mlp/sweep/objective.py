"""One trial of a sweep: one ordinary run, ``SWEEP_DIR/trial-0007/``, scored on the validation split.

The trial's options are the space's fixed ones and its sampled ones; the run is :func:`train`
itself, so each trial directory holds the run's configuration, its history, the best checkpoint and
TensorBoard events like any run (``evaluate``, ``predict`` and ``export`` take it). Optuna's
:class:`~optuna_integration.PyTorchIgnitePruningHandler` on the evaluator reports each epoch's
validation accuracy and stops a trial that is behind. The test split is never read here.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from ignite.engine import Engine, Events
from optuna.trial import TrialState
from optuna_integration import PyTorchIgnitePruningHandler

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import Dataset
from ignite_mlp.run.training import RunContext, train
from ignite_mlp.sweep.space import SearchSpace, suggest

# What counts towards --trials, and what will: finished, running, and queued again after a death.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
COUNTED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
# The metric the pruner watches: validation accuracy in percent, as the objective and history report it.
PRUNE_METRIC = "accuracy_percent"


class QuietPruning(logging.Filter):
    """Drop Ignite's error line for a pruned trial: pruning is the sweep working, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Trial was pruned" not in record.getMessage()


class SurplusTrial(Exception):
    """A trial asked for after the study already had its --trials: recorded as failed, never run."""


def run_dir_of(sweep_dir: Path, number: int) -> Path:
    """Where trial ``number`` runs.

    >>> run_dir_of(Path("runs/sweep1"), 7).as_posix()
    'runs/sweep1/trial-0007'
    """
    return sweep_dir / f"trial-{number:04d}"


def lock_path(sweep_dir: Path, number: int) -> Path:
    """The file a live worker holds locked while it runs trial ``number`` (see :class:`TrialLock`)."""
    return sweep_dir / ".locks" / f"trial-{number:04d}.lock"


class TrialLock:
    """An exclusive lock on a trial's lock file, held while its worker runs it and until Optuna
    has recorded its end. The kernel drops it when the process dies (even by ``kill -9``): that
    is how a restarted sweep tells a dead worker's trial from a live one (:func:`lock_is_free`)."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self, path: Path) -> None:
        self.release()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds ``path``'s lock: its trial's worker is gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def trial_config(
    values: dict[str, Any], data: str, run_dir: Path, val_split: float, device: str, cache_dir: str | None = None
) -> TrainConfig:
    """The train options of one trial: its values, with what the sweep sets for every trial."""
    settings = dict(values)
    recipe = settings.pop("recipe", "tutorial")
    return TrainConfig.from_recipe(
        recipe,
        **settings,
        data=data,
        run_dir=str(run_dir),
        # Trial numbers are never reused in a study, so a folder there is a dead worker's leftover.
        overwrite=True,
        val_split=val_split,
        progress="off",
        device=device,
        # Recorded in the trial's run, so its evaluation and best.toml read the same decode cache.
        cache_dir=cache_dir,
    )


def pruning(trial: optuna.Trial) -> Any:
    """A run handler that reports each validation to ``trial`` and stops the run if Optuna prunes it."""

    def attach(trainer: Engine, evaluator: Engine, context: RunContext) -> None:
        def in_percent(engine: Engine) -> None:
            engine.state.metrics[PRUNE_METRIC] = 100.0 * float(engine.state.metrics["accuracy"])

        evaluator.add_event_handler(Events.COMPLETED, in_percent)
        evaluator.add_event_handler(Events.COMPLETED, PyTorchIgnitePruningHandler(trial, PRUNE_METRIC, trainer))

    return attach


class Objective:
    """Optuna's objective: train one trial's run and return its best validation accuracy (percent)."""

    def __init__(
        self,
        space: SearchSpace,
        sweep_dir: Path,
        data: str,
        dataset: Dataset,
        total: int,
        val_split: float,
        device: str,
        cache_dir: str | None = None,
    ) -> None:
        self.space, self.sweep_dir, self.data, self.dataset = space, sweep_dir, data, dataset
        self.total, self.val_split, self.device, self.cache_dir = total, val_split, device, cache_dir
        # Released by the worker after Optuna records the trial's state (see study.run_worker).
        self.lock = TrialLock()
        logging.getLogger("ignite.engine.engine.Engine").addFilter(QuietPruning())

    def __call__(self, trial: optuna.Trial) -> float:
        refuse_surplus(trial, self.total)
        run_dir = run_dir_of(self.sweep_dir, trial.number)
        self.lock.acquire(lock_path(self.sweep_dir, trial.number))
        # Set only once the lock is held: a running trial with a run_dir and a free lock lost its worker.
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("run_dir", str(run_dir))
        values = suggest(trial, self.space)
        config = trial_config(values, self.data, run_dir, self.val_split, self.device, self.cache_dir)
        result = train(config, [pruning(trial)], dataset=self.dataset, write=_quiet, evaluate_test=False)
        if result.stopped:  # a NaN loss: a bad point of the space, not a bug
            trial.set_user_attr("stopped", result.stopped.split(";")[0])
        if result.best_val_acc is None:
            raise optuna.TrialPruned("no epoch finished")
        return result.best_val_acc


def refuse_surplus(trial: optuna.Trial, total: int) -> None:
    """Refuse a trial numbered after ``total`` others that are finished, running or queued.

    Workers check the count before asking for a trial, but two may ask at once; trial numbers
    are handed out in order by the storage, so the later one sees the earlier and steps back.
    """
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number]
    if len(earlier) >= total:
        trial.set_user_attr("note", f"not run: the study already had its {total} trials")
        raise SurplusTrial(f"trial {trial.number}: the study already has its {total} trials")


def _quiet(line: str) -> None:
    """A trial's own lines: not printed (the sweep prints one line per finished trial)."""
