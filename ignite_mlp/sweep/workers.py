"""The workers of a sweep: each runs trials one at a time until the study holds ``--trials``
finished ones; ``--jobs J`` of them on this machine are J processes, the cores split between them.

* Dead workers: with a database, heartbeats and Optuna's retry callback fail a silent worker's
  trial and queue it again. On the journal, a running trial whose lock file nobody holds lost its
  worker, whatever host name it ran under (see :mod:`.locks`): it is failed and queued again.
* Waiting: when the study's last trials are running elsewhere, a worker waits for them (if one
  of their workers dies, its trial is queued again and this worker runs it), saying once what it
  waits for and why.
* Ctrl-C: the first press stops every worker (the running trial after its current step, recorded
  as failed); a second press stops at once. Workers sit in their own process group, so a press
  at the terminal reaches the parent alone, which passes each press on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ignite_mlp.errors import TrainingInterrupted, UserError
from ignite_mlp.sweep.locks import TrialLock, create_lock_path, lock_is_free, lock_path
from ignite_mlp.sweep.objective import COUNTED, FINISHED, Objective, StopFlag, SurplusTrial, SweepStopped
from ignite_mlp.sweep.settings import Plan, SweepSettings
from ignite_mlp.sweep.storage import open_study, retry_callback


@dataclass
class Counts:
    finished: int
    running: int
    waiting: int


def count(study: optuna.Study) -> Counts:
    states = [t.state for t in study.get_trials(deepcopy=False, states=COUNTED)]
    return Counts(
        sum(s in FINISHED for s in states), states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
    )


def reclaim_dead_trials(study: optuna.Study, settings: SweepSettings) -> list[int]:
    """Fail, and queue again, the running trials whose worker died: past their heartbeat's grace
    with a database; on the journal, those whose lock nobody holds (looked at while holding the
    creation lock, so a trial just created, not locked yet, is not among them)."""
    if settings.storage is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # the storage's retry callback queues them again
        return []
    sweep_dir, reclaimed = Path(settings.sweep_dir), []
    with TrialLock() as creating:
        creating.acquire(create_lock_path(sweep_dir))
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not lock_is_free(lock_path(sweep_dir, trial.number)):
                continue
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # finished meanwhile: not dead after all
                continue
            frozen = study.get_trials(deepcopy=False)[trial.number]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                next(iter(retry_callback().values()))(study, frozen)  # type: ignore[operator]
            reclaimed.append(trial.number)
    return reclaimed


def waiting_line(study: optuna.Study, settings: SweepSettings) -> str:
    """What an idle worker waits for, and why."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    names = ", ".join(
        f"{t.number} ({t.user_attrs.get('host', '?')}, pid {t.user_attrs.get('pid', '?')})" for t in running
    )
    if settings.storage is None:
        why = "their workers hold their lock files, so they are alive; a dead one's trial is run again here"
    else:
        why = (
            f"their workers send heartbeats; one silent for {settings.grace_period} s is dead and its trial "
            "is run again here"
        )
    return f"waiting for trials {names} to finish the study's {settings.trials} trials: {why}"


def run_worker(plan: Plan, worker: int = 0, write: Callable[[str], None] = print, stop: StopFlag | None = None) -> None:
    """One worker: run trials one at a time until the study has ``settings.trials`` finished ones."""
    import torch

    from ignite_mlp.data import load_dataset  # torch: only where trials run
    from ignite_mlp.sweep.space import load_space

    settings = plan.settings
    if settings.jobs > 1:  # the cores split between the workers (one worker keeps torch's own choice)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.jobs))
    # A surplus trial is recorded as failed on purpose; the sweep prints its own line per trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    stop = stop or StopFlag()
    study = open_study(settings, worker)
    dataset = load_dataset(settings.data, settings.cache_dir, progress="off")
    creating = TrialLock()
    objective = Objective(load_space(settings.space), plan, dataset, stop, creating)
    said = ""
    while True:
        stop.check()
        for number in reclaim_dead_trials(study, settings):
            write(f"trial {number}: its worker died (its lock is free); failed and queued again")
        counts = count(study)
        if counts.finished >= settings.trials:
            return
        if counts.finished + counts.running >= settings.trials and counts.waiting == 0:
            line = waiting_line(study, settings)
            if line != said:
                write(line)
                said = line
            time.sleep(settings.poll_seconds)
            continue
        if settings.storage is None:
            creating.acquire(create_lock_path(Path(settings.sweep_dir)))
        try:
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
        finally:
            creating.release()
            objective.lock.release()  # only now: Optuna has recorded the trial's end


def spawn_workers(plan: Plan, stop: StopFlag) -> list[multiprocessing.process.BaseProcess]:
    """Start ``jobs`` worker processes, each Ctrl-C passed on to them from before the first starts."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    jobs = plan.settings.jobs
    workers = [context.Process(target=_worker_main, args=(plan, i), name=f"sweep-worker-{i}") for i in range(jobs)]
    signal.signal(signal.SIGINT, pass_on_ctrl_c(workers, stop))
    for process in workers:
        if not stop.requested:  # a press while they start: the ones not started yet never start
            process.start()
    return workers


def pass_on_ctrl_c(workers: list[multiprocessing.process.BaseProcess], stop: StopFlag) -> Callable[[int, object], None]:
    """The parent's SIGINT handler: each press goes on to every worker, the first one also marks the
    sweep stopped (a second press makes the workers stop at once)."""

    def handler(signum: int, frame: object) -> None:
        stop.requested = True
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGINT)

    return handler


def _worker_main(plan: Plan, worker: int) -> None:
    """A worker process: its errors are printed as one line, like the CLI's."""
    os.setpgrp()  # a Ctrl-C at the terminal reaches the parent alone, which passes it on
    stop = StopFlag()
    signal.signal(signal.SIGINT, stop)

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        run_worker(plan, worker, write, stop)
    except (KeyboardInterrupt, TrainingInterrupted, SweepStopped):  # Ctrl-C: the trial ended, recorded as failed
        sys.exit(130)
    except UserError as e:
        print(f"ignite-mlp: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as e:  # a full disk, a folder made read-only while it ran
        where = e.filename or "the sweep folder"
        print(f"ignite-mlp: error: {where}: {e.strerror}; fix it, then run the same command", file=sys.stderr)
        sys.exit(2)
