"""What one ``ignite-mlp sweep`` command asks for: :class:`SweepSettings`, its defaults written
once (the command line's parser reads them from here), and the checks that need nothing but
the settings and the machine. Importable without torch or Optuna, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ignite_mlp.config.validation import check_seed
from ignite_mlp.errors import UserError
from ignite_mlp.sweep.storage import public_url

PRUNERS = ("median", "hyperband", "none")
JOURNAL = "journal.log"
# The default validation split: this fraction of the training images, at most VAL_CAP of them
# (5000 is CIFAR-10's customary split; a small data set still gets a tenth).
VAL_FRACTION = 0.1
VAL_CAP = 5000
# What one worker takes: the process, torch, the data mapped and a trial's model (measured on the
# tutorial recipe with CIFAR-10: about 0.7 GB resident).
WORKER_BYTES = 0.7e9
# PostgreSQL's studies.study_name column (Optuna's model) holds this many characters.
MAX_STUDY_NAME = 512


@dataclass(frozen=True)
class SweepSettings:
    """What one ``ignite-mlp sweep`` command asks for (picklable: each worker process gets a copy)."""

    data: str
    space: str
    sweep_dir: str = "runs/sweep"
    trials: int = 1
    jobs: int = 1
    storage: str | None = None
    study: str | None = None
    seed: int | None = None
    pruner: str = "median"
    # None: VAL_FRACTION of the training images, at most VAL_CAP (resolved once the data is read).
    val_split: float | None = None
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

    @property
    def journal(self) -> Path:
        return Path(self.sweep_dir) / JOURNAL

    def where(self) -> str:
        """The study's storage as a user may see it (no password)."""
        return public_url(self.storage) if self.storage is not None else str(self.journal)

    def check(self) -> None:
        """Refuse impossible settings before anything is read or started."""
        if self.trials < 1:
            raise UserError(f"--trials must be >= 1 (got {self.trials}); e.g. --trials 40")
        if self.jobs < 1:
            raise UserError(f"--jobs must be >= 1 (got {self.jobs}); e.g. --jobs 2")
        most, why = max_jobs()
        if self.jobs > most:
            raise UserError(f"--jobs {self.jobs}: {why}; give --jobs {most} or fewer")
        if self.pruner not in PRUNERS:
            raise UserError(f"--pruner must be one of {PRUNERS} (got {self.pruner!r})")
        if self.seed is not None:
            check_seed(self.seed)  # the one rule, train's
        if self.val_split is not None and self.val_split == 0:
            raise UserError(
                "--val-split 0: a sweep scores its trials on a validation split, never on the test split; "
                f"give a count or a fraction (or leave it out: {VAL_FRACTION:g} of the images, at most {VAL_CAP})"
            )
        split = self.val_split
        if split is not None and not (0 < split < 1 or (1 <= split < float("inf") and float(split).is_integer())):
            raise UserError(f"--val-split {split:g}: give a count of images or a fraction below 1, such as 0.1")
        self.check_storage()
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise UserError(
                f"--grace-period ({self.grace_period}) must exceed --heartbeat-interval ({self.heartbeat_interval}), "
                "which must be >= 1; e.g. 60 and 180"
            )

    def check_storage(self) -> None:
        """Refuse a storage that is no URL, SQLite with several workers, or a study name too long for it."""
        if len(self.study_name) > MAX_STUDY_NAME:
            raise UserError(
                f"--study: a name of {len(self.study_name)} characters; a study's name holds at most "
                f"{MAX_STUDY_NAME} (the databases' limit): give a shorter one"
            )
        if self.storage is None:
            return
        if "://" not in self.storage:
            raise UserError(
                f"--storage {public_url(self.storage)}: give a database URL such as postgresql://user@host/db"
            )
        if self.storage.startswith("sqlite") and self.jobs > 1:
            raise UserError(
                f"--storage {public_url(self.storage)}: SQLite locks under concurrent workers; leave --storage out "
                "(a journal file in the sweep folder) or use PostgreSQL for --jobs > 1"
            )


@dataclass(frozen=True)
class Plan:
    """What the sweep decided once at its start, for every worker: the settings (absolute paths),
    the validation images held out, and the precision every trial computes in."""

    settings: SweepSettings
    val_count: int
    precision: str | None


def max_jobs() -> tuple[int, str]:
    """How many workers this machine holds: one per core this process may use, and about
    :data:`WORKER_BYTES` of memory each; with the sentence that says so."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: the cores alone
        return cores, f"this machine has {cores} cores (one worker each)"
    by_memory = max(1, int(memory // WORKER_BYTES))
    why = (
        f"this machine has {cores} cores and {memory / 1e9:.0f} GB of memory: room for {min(cores, by_memory)} "
        f"workers (one a core, about {WORKER_BYTES / 1e9:.1f} GB each)"
    )
    return min(cores, by_memory), why


def add_sweep_arguments(sweep: argparse.ArgumentParser) -> None:
    """The ``sweep`` command's options; their defaults are :class:`SweepSettings`'s."""
    d = {f.name: f.default for f in dataclasses.fields(SweepSettings)}
    sweep.add_argument("--data", default="./data", help="data folder or .tar.gz (default: ./data)")
    sweep.add_argument(
        "--space",
        metavar="SPACE.TOML",
        help="search space: [fixed] options, [search.OPTION] ranges; or a shipped one by name (best, strong, tutorial)",
    )
    sweep.add_argument("--trials", type=int, help="finished trials the study should hold, over all workers")
    sweep.add_argument(
        "--jobs",
        type=int,
        default=d["jobs"],
        help=f"worker processes on this machine, at most one a core (default: {d['jobs']})",
    )
    sweep.add_argument(
        "--sweep-dir", default=d["sweep_dir"], help=f"trial runs, journal and report (default: {d['sweep_dir']})"
    )
    sweep.add_argument("--storage", help="database URL shared by machines (default: a journal file in --sweep-dir)")
    sweep.add_argument("--study", help="study name (default: the sweep folder's name)")
    sweep.add_argument("--seed", type=int, help="seed of the sampler's proposals (each worker adds its index)")
    sweep.add_argument("--pruner", default=d["pruner"], help=f"{' | '.join(PRUNERS)} (default: {d['pruner']})")
    sweep.add_argument(
        "--val-split",
        type=float,
        default=d["val_split"],
        help=f"validation images held out: a count, or a fraction below 1 (default: {VAL_FRACTION:g} of the "
        f"training images, at most {VAL_CAP}); 0 is refused: trials are never scored on the test split",
    )
    sweep.add_argument("--device", default=d["device"], help=f"auto | cpu | cuda | cuda:N (default: {d['device']})")
    sweep.add_argument("--cache-dir", help="decoded-data cache (default: ~/.cache/ignite_mlp)")
    sweep.add_argument(
        "--heartbeat-interval",
        type=int,
        default=d["heartbeat_interval"],
        help=f"database: seconds between heartbeats (default: {d['heartbeat_interval']})",
    )
    sweep.add_argument(
        "--grace-period",
        type=int,
        default=d["grace_period"],
        help=f"database: silent seconds before a trial is dead (default: {d['grace_period']})",
    )
    sweep.add_argument("--report", action="store_true", help="only print the table and write the best files")


def settings_from_args(ns: argparse.Namespace) -> SweepSettings:
    """The settings of a parsed ``sweep`` command line."""
    return SweepSettings(
        data=ns.data,
        space=ns.space or "",
        sweep_dir=ns.sweep_dir,
        trials=ns.trials if ns.trials is not None else 1,
        jobs=ns.jobs,
        storage=ns.storage,
        study=ns.study,
        seed=ns.seed,
        pruner=ns.pruner,
        val_split=ns.val_split,
        device=ns.device,
        cache_dir=ns.cache_dir,
        heartbeat_interval=ns.heartbeat_interval,
        grace_period=ns.grace_period,
    )


def absolute(settings: SweepSettings) -> SweepSettings:
    """``settings`` with the sweep folder, the data, the space file and the cache folder absolute, so
    every trial, record and report names them the same from any folder."""

    def local(path: str | None) -> str | None:
        return None if path is None or "://" in path else os.path.abspath(os.path.expanduser(path))

    space = local(settings.space) if settings.space and os.path.exists(settings.space) else settings.space
    return dataclasses.replace(
        settings,
        sweep_dir=local(settings.sweep_dir) or "",
        data=local(settings.data) or "",
        space=space or "",
        cache_dir=local(settings.cache_dir),
    )
