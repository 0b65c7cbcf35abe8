"""One trial of a sweep: one ordinary run, ``SWEEP_DIR/trial-0007/``, scored on the validation split.

The trial's options are the space's fixed ones and its sampled ones; the run is :func:`train`
itself, so each trial directory holds the run's configuration, its history, the best checkpoint and
TensorBoard events like any run (``evaluate``, ``predict`` and ``export`` take it). Optuna's
:class:`~optuna_integration.PyTorchIgnitePruningHandler` on the evaluator reports each epoch's
validation accuracy and stops a trial that is behind. The test split is never read here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import optuna
from ignite.engine import Engine, Events
from optuna.trial import TrialState
from optuna_integration import PyTorchIgnitePruningHandler

from ignite_mlp.config.train_config import TrainConfig
from ignite_mlp.data import Dataset
from ignite_mlp.errors import UserError
from ignite_mlp.progress import silent
from ignite_mlp.run.training import RunContext, train
from ignite_mlp.sweep.locks import TrialLock, lock_path
from ignite_mlp.sweep.settings import Plan
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


class SweepStopped(Exception):
    """Ctrl-C was pressed: no further trial is started (the running one is recorded as failed)."""


class StopFlag:
    """The sweep's SIGINT handler: the first Ctrl-C asks every part to stop (the running trial
    after its current step, the worker before its next trial); a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise SweepStopped("stopped by Ctrl-C")


def relay_ctrl_c(stop: StopFlag) -> Any:
    """A run handler: while the trial trains, ``train`` routes Ctrl-C to its own stop request; this
    chains the sweep's flag in front of it, so a press that ends a trial also ends the sweep (a
    trial that finishes its last step anyway would otherwise leave the press forgotten)."""

    def attach(trainer: Engine, evaluator: Engine, context: RunContext) -> None:
        def chain(engine: Engine) -> None:
            inner = signal.getsignal(signal.SIGINT)
            if not callable(inner) or inner is stop:  # train runs off the main thread: nothing routed
                return

            def both(signum: int, frame: Any) -> None:
                stop.requested = True
                inner(signum, frame)

            signal.signal(signal.SIGINT, both)  # train's block puts the sweep's handler back at its end
            if stop.requested:  # pressed while the trial was being set up
                inner(signal.SIGINT, None)

        trainer.add_event_handler(Events.STARTED, chain)

    return attach


def run_dir_of(sweep_dir: Path, number: int) -> Path:
    """Where trial ``number`` runs.

    >>> run_dir_of(Path("runs/sweep1"), 7).as_posix()
    'runs/sweep1/trial-0007'
    """
    return sweep_dir / f"trial-{number:04d}"


def trial_config(
    values: dict[str, Any],
    data: str,
    run_dir: Path,
    val_split: float,
    device: str,
    cache_dir: str | None = None,
    precision: str | None = None,
) -> TrainConfig:
    """The train options of one trial: its values, with what the sweep sets for every trial (the
    precision decided once for the sweep, unless the space sets it)."""
    settings = dict(values)
    recipe = settings.pop("recipe", "tutorial")
    if precision is not None and settings.get("precision", "auto") == "auto":
        settings["precision"] = precision
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
    """Optuna's objective: train one trial's run and return its best validation accuracy (percent).

    ``create_lock`` is held by the worker from the moment it asks Optuna for a trial: released
    here once the trial's own lock is held (see :mod:`.locks`)."""

    def __init__(
        self,
        space: SearchSpace,
        plan: Plan,
        dataset: Dataset,
        stop: StopFlag | None = None,
        create_lock: TrialLock | None = None,
    ) -> None:
        self.space, self.plan, self.dataset = space, plan, dataset
        self.sweep_dir = Path(plan.settings.sweep_dir)
        self.stop, self.create_lock = stop or StopFlag(), create_lock or TrialLock()
        # Released by the worker after Optuna records the trial's state (see workers.run_worker).
        self.lock = TrialLock()
        logging.getLogger("ignite.engine.engine.Engine").addFilter(QuietPruning())

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            refuse_surplus(trial, self.plan.settings.trials)
            run_dir = run_dir_of(self.sweep_dir, trial.number)
            self.lock.acquire(lock_path(self.sweep_dir, trial.number))
        finally:
            self.create_lock.release()
        self.stop.check()
        refuse_link(run_dir)
        # Set only once the lock is held: a running trial whose lock is free lost its worker.
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("run_dir", str(run_dir))
        values = suggest(trial, self.space)
        settings = self.plan.settings
        config = trial_config(
            values,
            settings.data,
            run_dir,
            self.plan.val_count,
            settings.device,
            settings.cache_dir,
            self.plan.precision,
        )
        handlers = [pruning(trial), relay_ctrl_c(self.stop)]
        result = train(config, handlers, dataset=self.dataset, write=silent, evaluate_test=False)
        if result.stopped:  # a NaN loss: a bad point of the space, not a bug
            trial.set_user_attr("stopped", result.stopped.split(";")[0])
        if result.best_val_acc is None:
            raise optuna.TrialPruned("no epoch finished")
        return result.best_val_acc


def refuse_link(run_dir: Path) -> None:
    """A trial folder that is a symbolic link would have the run written elsewhere: refused."""
    try:
        if stat.S_ISLNK(os.lstat(run_dir).st_mode):
            raise UserError(f"{run_dir}: is a symbolic link; a trial runs only in its own folder: remove the link")
    except FileNotFoundError:
        pass


def refuse_surplus(trial: optuna.Trial, total: int) -> None:
    """Refuse a trial numbered after ``total`` others that are finished, running or queued.

    Workers check the count before asking for a trial, but two may ask at once; trial numbers
    are handed out in order by the storage, so the later one sees the earlier and steps back.
    """
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number]
    if len(earlier) >= total:
        trial.set_user_attr("note", f"not run: the study already had its {total} trials")
        raise SurplusTrial(f"trial {trial.number}: the study already has its {total} trials")
