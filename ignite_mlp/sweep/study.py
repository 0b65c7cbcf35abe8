"""The study behind a sweep: its storage, its workers, and exactly ``--trials`` finished trials.

* Storage: with no ``--storage``, an Optuna journal file in the sweep folder (nothing to install
  or start; processes on this machine share it). With ``--storage URL`` (PostgreSQL, MySQL: any
  URL Optuna's ``RDBStorage`` takes), workers on many machines share one study; heartbeats and
  Optuna's retry callback turn a dead worker's trial into a failed one that is run again.
  The journal has no heartbeat: there a worker's lock file (see :mod:`.objective`) tells a
  live worker from a dead one, and a dead worker's trial on this machine is failed and queued again.
* Workers: ``--jobs J`` processes on this machine, the cores split between them. Each runs one
  trial at a time until the study holds ``--trials`` finished (complete or pruned) trials.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from ignite_mlp.config.train_config import read_toml
from ignite_mlp.errors import TrainingInterrupted, UserError
from ignite_mlp.sweep.objective import COUNTED, FINISHED, Objective, SurplusTrial, lock_is_free, lock_path
from ignite_mlp.sweep.space import SearchSpace, load_space, parse_space

PRUNERS = ("median", "hyperband", "none")
JOURNAL = "journal.log"
# Optuna's retry callback was renamed in 4.9; either does the same.
_Retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
_RETRY_ARGUMENT = (
    "heartbeat_stale_trial_callback"
    if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
    else "failed_trial_callback"
)


@dataclass(frozen=True)
class SweepSettings:
    """What one ``ignite-mlp sweep`` command asks for (picklable: each worker process gets a copy)."""

    data: str
    space: str
    sweep_dir: str
    trials: int
    jobs: int = 1
    storage: str | None = None
    study: str | None = None
    seed: int | None = None
    pruner: str = "median"
    val_split: float = 5000
    device: str = "auto"
    cache_dir: str | None = None
    # With a database: how often a worker says it is alive, and how long silence means it died.
    heartbeat_interval: int = 60
    grace_period: int = 180
    # How often an idle worker looks again at a study whose last trials others are running.
    poll_seconds: float = 2.0

    @property
    def study_name(self) -> str:
        return self.study or Path(self.sweep_dir).resolve().name

    def check(self) -> None:
        """Refuse impossible settings before anything is read or started."""
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1 (got {self.trials}); e.g. --trials 40")
        if self.jobs < 1:
            raise UserError(f"--jobs must be >= 1 (got {self.jobs}); e.g. --jobs 2")
        if self.pruner not in PRUNERS:
            raise UserError(f"--pruner must be one of {PRUNERS} (got {self.pruner!r})")
        if self.seed is not None and not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be in [0, 2**32 - 1] (got {self.seed}); e.g. --seed 0")
        if self.storage is not None and "://" not in self.storage:
            raise UserError(f"--storage {self.storage}: give a database URL such as postgresql://user:pw@host/db")
        if self.storage is not None and self.storage.startswith("sqlite") and self.jobs > 1:
            raise UserError(
                f"--storage {self.storage}: SQLite locks under concurrent workers; leave --storage out (a journal "
                "file in the sweep folder) or use PostgreSQL for --jobs > 1"
            )
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise UserError(
                f"--grace-period ({self.grace_period}) must exceed --heartbeat-interval ({self.heartbeat_interval}), "
                "which must be >= 1; e.g. 60 and 180"
            )


def open_storage(settings: SweepSettings) -> optuna.storages.BaseStorage:
    """The study's storage: the journal file in the sweep folder, or the database of ``--storage``."""
    if settings.storage is None:
        path = Path(settings.sweep_dir) / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(
                database_url(settings.storage),
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                **{_RETRY_ARGUMENT: _Retry(max_retry=3)},
            )
        except Exception as e:  # SQLAlchemy's many error classes: bad URL, no server, bad password
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"--storage: cannot open the database ({reason}); check the URL and the server") from None


def database_url(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a plain
    ``postgresql://`` as psycopg 3, the sweep extra installs psycopg2.

    >>> database_url("mysql://u@h/db")
    'mysql://u@h/db'
    """
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_study(settings: SweepSettings, worker: int = 0, create: bool = True) -> optuna.Study:
    """Create the study, or load it to continue: the same command on any machine joins it."""
    seed = None if settings.seed is None else (settings.seed + worker) % 2**32
    if not create:
        try:
            return optuna.load_study(study_name=settings.study_name, storage=open_storage(settings))
        except KeyError:
            raise UserError(
                f"--study {settings.study_name}: no such study in {_public_url(settings.storage) or settings.sweep_dir}"
                "; "
                "give the --study and --storage (or --sweep-dir) the sweep ran with"
            ) from None
    return optuna.create_study(
        study_name=settings.study_name,
        storage=open_storage(settings),
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(settings.pruner),
        direction="maximize",
        load_if_exists=True,
    )


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Median (once 3 trials finished, from the 2nd epoch on: the 1st is noisy), Hyperband, or none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


@dataclass
class Counts:
    finished: int
    running: int
    waiting: int


def count(study: optuna.Study) -> Counts:
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    states = [t.state for t in trials]
    return Counts(
        sum(s in FINISHED for s in states), states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
    )


def reclaim_dead_trials(study: optuna.Study, settings: SweepSettings) -> list[int]:
    """Fail, and queue again, the running trials whose worker died: past their heartbeat's grace
    with a database; on the journal, those of this machine whose lock nobody holds."""
    if settings.storage is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # the storage's retry callback queues them again
        return []
    host, sweep_dir, reclaimed = socket.gethostname(), Path(settings.sweep_dir), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and "run_dir" in attrs and lock_is_free(lock_path(sweep_dir, trial.number)):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # finished meanwhile: not dead after all
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                _Retry(max_retry=3)(study, _frozen(study, trial.number))
            reclaimed.append(trial.number)
    return reclaimed


def _frozen(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def run_worker(settings: SweepSettings, worker: int = 0, write: Callable[[str], None] = print) -> None:
    """One worker: run trials one at a time until the study has ``settings.trials`` finished ones.

    When the study's last trials are running on other workers, wait for them: if one of their
    workers dies, its trial is queued again and this worker runs it.
    """
    import torch

    from ignite_mlp.data import load_dataset  # torch: only where trials run

    if settings.jobs > 1:  # the cores split between the workers (one worker keeps torch's own choice)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.jobs))
    # A surplus trial is recorded as failed on purpose; the sweep prints its own line per trial.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(settings.space)
    study = open_study(settings, worker)
    dataset = load_dataset(settings.data, settings.cache_dir, progress="off")
    sweep_dir = Path(settings.sweep_dir)
    objective = Objective(
        space,
        sweep_dir,
        settings.data,
        dataset,
        settings.trials,
        settings.val_split,
        settings.device,
        settings.cache_dir,
    )
    progress = TrialLines(settings.trials, settings.jobs, write)
    while True:
        for number in reclaim_dead_trials(study, settings):
            write(f"trial {number}: its worker died; failed and queued again")
        counts = count(study)
        if counts.finished >= settings.trials:
            return
        if counts.finished + counts.running >= settings.trials and counts.waiting == 0:
            time.sleep(settings.poll_seconds)
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(SurplusTrial,), callbacks=[progress])
        finally:
            objective.lock.release()  # only now: Optuna has recorded the trial's end


class TrialLines:
    """Optuna callback: one line per finished trial (number, state, value, best so far, trials
    left and an estimate of the time left), not a progress bar per epoch from every worker."""

    def __init__(self, total: int, jobs: int, write: Callable[[str], None]) -> None:
        self.total, self.jobs, self.write = total, jobs, write

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            return
        self.write(trial_line(study, trial, self.total, self.jobs))


def trial_line(study: optuna.Study, trial: FrozenTrial, total: int, jobs: int) -> str:
    """The line printed when ``trial`` finishes."""
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    left = max(0, total - len(finished))
    epochs = len(trial.intermediate_values)
    value = f"{trial.value:.2f}%" if trial.value is not None else "-"
    if trial.state == TrialState.PRUNED:
        value = f"pruned at epoch {epochs} ({value})"
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0, default=None)
    best_text = f"best {best.value:.2f}% (trial {best.number})" if best is not None else "best -"
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished if t.datetime_start]
    eta = ""
    if left and durations:
        seconds = sum(durations) / len(durations) * left / jobs
        eta = f", about {_duration(seconds)} left"
    return f"trial {trial.number}: {value} | {best_text} | {left} of {total} trials to go{eta}"


def _duration(seconds: float) -> str:
    """
    >>> _duration(42), _duration(300), _duration(7200)
    ('42 s', '5 min', '2.0 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_sweep_dir(settings: SweepSettings) -> None:
    """One sweep folder holds one study: its trial folders are named by trial number only."""
    record = Path(settings.sweep_dir) / "sweep.json"
    mine = {"study": settings.study_name, "storage": _public_url(settings.storage)}
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            saved = mine
        if saved.get("study") != mine["study"]:
            raise UserError(
                f"--sweep-dir {settings.sweep_dir} holds study {saved.get('study')!r}; give --study "
                f"{saved.get('study')} to continue it, or another --sweep-dir for a new study"
            )
        return
    from ignite_mlp.files import write_json_atomic

    Path(settings.sweep_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, mine)


def _public_url(url: str | None) -> str | None:
    """A storage URL without its password, for files and printouts.

    >>> _public_url("postgresql://me:secret@db:5432/optuna")
    'postgresql://me:***@db:5432/optuna'
    """
    if url is None or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def run_sweep(settings: SweepSettings, write: Callable[[str], None] = print) -> optuna.Study:
    """Run the study to ``settings.trials`` finished trials with ``settings.jobs`` worker
    processes (this process alone with one) and return it. A Ctrl-C reaches every worker: each
    stops its trial cleanly (the trial is recorded as failed); run the same command to continue."""
    settings.check()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space: SearchSpace = load_space(settings.space)  # a bad file fails here, before any process starts
    check_sweep_dir(settings)
    study = open_study(settings)  # created once here, so workers only load it
    record_study_settings(study, settings)
    counts = count(study)
    write(
        f"sweep: study {settings.study_name!r} on {_public_url(settings.storage) or Path(settings.sweep_dir) / JOURNAL}"
        f": {counts.finished} of {settings.trials} trials finished, {len(space.params)} options searched, "
        f"{settings.jobs} worker(s)"
    )
    if settings.jobs == 1:
        run_worker(settings, 0, write)
        return study
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    workers = [
        context.Process(target=_worker_main, args=(settings, i), name=f"sweep-worker-{i}") for i in range(settings.jobs)
    ]
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join()
    except KeyboardInterrupt:
        for process in workers:  # they got the same Ctrl-C: each ends its trial cleanly
            process.join()
        raise
    failed = [p.name for p in workers if p.exitcode not in (0, None)]
    if failed and count(study).finished < settings.trials:
        raise UserError(f"{', '.join(failed)} stopped with an error (see above); run the same command to continue")
    return study


def _worker_main(settings: SweepSettings, worker: int) -> None:
    """A worker process: its errors are printed as one line, like the CLI's."""
    import sys

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        run_worker(settings, worker, write)
    except (KeyboardInterrupt, TrainingInterrupted):  # Ctrl-C: the trial ended cleanly, recorded as failed
        sys.exit(130)
    except UserError as e:
        print(f"ignite-mlp: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def settings_dict(settings: SweepSettings) -> dict[str, Any]:
    """The settings as recorded in best.json (the storage URL without its password)."""
    return {**dataclasses.asdict(settings), "storage": _public_url(settings.storage)}


def record_study_settings(
    study: optuna.Study, settings: SweepSettings, from_study: bool = False
) -> tuple[SweepSettings, SearchSpace]:
    """Keep the sweep's data, validation split and search space in the study, so a report from
    any machine (``sweep --report``) writes the same best.toml; with ``from_study``, read them back.

    Continuing a study with another validation split or another space would compare trials that are not
    comparable: refused.
    """
    saved = study.user_attrs.get("sweep")
    if from_study:
        if saved is None:
            raise UserError(f"study {study.study_name!r} was not made by ignite-mlp sweep: nothing to report")
        merged = dataclasses.replace(settings, data=saved["data"], val_split=saved["val_split"])
        return merged, parse_space(saved["space"], "(saved in the study)")
    if saved is not None and float(saved["val_split"]) != float(settings.val_split):
        raise UserError(
            f"--val-split {settings.val_split:g}: study {study.study_name!r} scores its trials on a split of "
            f"{saved['val_split']:g}; pass --val-split {saved['val_split']:g} to continue it"
        )
    raw = read_toml(settings.space, "--space", "a search-space TOML file")
    space = parse_space(raw, settings.space)
    if saved is not None and saved.get("space") != raw:
        # Trials proposed from another space would be compared as if they were one search.
        raise UserError(
            f"--space {settings.space}: study {study.study_name!r} searches another space; give the file it was "
            "started with, or another --study for this one"
        )
    if saved is None:
        study.set_user_attr("sweep", {"data": settings.data, "val_split": settings.val_split, "space": raw})
    return settings, space
