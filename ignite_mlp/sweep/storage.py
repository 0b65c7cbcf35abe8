"""Where a study lives: the journal file in the sweep folder, or the database of ``--storage``.

The URL a user gives is the URL Optuna's own tools take (``optuna.load_study(storage=URL)``,
``optuna-dashboard URL``): it is handed to :class:`~optuna.storages.RDBStorage` as is, and
SQLAlchemy picks the driver (psycopg 3 for ``postgresql://``, which the sweep extra installs).
The URL is shown and written only through :func:`public_url`, which hides every secret in it.
Several workers may start at once on a new database: Optuna's table creation can then lose a
race to another worker's (a unique violation, "already exists"); the loser retries, once the
winner's tables are there it simply opens them.
"""

from __future__ import annotations

import random
import re
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ignite_mlp.errors import UserError

if TYPE_CHECKING:
    import optuna

    from ignite_mlp.sweep.settings import SweepSettings

# Query parameters that carry a secret (libpq's password, sslpassword, a token...).
_SECRET = re.compile(r"pass|pwd|secret|token|key", re.I)
# What a lost race to create the tables looks like, in the words of PostgreSQL, SQLite and MySQL.
_RACE = re.compile(r"already exists|duplicate|unique|database is locked", re.I)
CREATE_TRIES = 8


def public_url(url: str | None) -> str | None:
    """A storage URL without its secrets (the password, and any query parameter holding one), for
    files and printouts.

    >>> public_url("postgresql://me:secret@db:5432/optuna")
    'postgresql://me:***@db:5432/optuna'
    >>> public_url("postgresql://me@db/optuna?password=secret&sslmode=require")
    'postgresql://me@db/optuna?password=***&sslmode=require'
    >>> public_url("sqlite:///runs/s.db")
    'sqlite:///runs/s.db'
    """
    if url is None or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    rest, hash_mark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        credentials, host = authority.rsplit("@", 1)
        user, colon, _ = credentials.partition(":")
        authority = f"{user}:***@{host}" if colon else authority
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if any(_SECRET.search(k) for k, _ in pairs):
        query = "&".join(f"{k}=***" if _SECRET.search(k) else f"{k}={v}" for k, v in pairs)
    fragment = "***" if fragment else ""
    return f"{scheme}://{authority}{slash}{path}{question}{query}{hash_mark}{fragment}"


def secrets_of(url: str) -> list[str]:
    """The secret strings in ``url`` (so an error message quoting them can be cleaned)."""
    parts = urllib.parse.urlsplit(url)
    found = [parts.password] if parts.password else []
    found += [v for k, v in urllib.parse.parse_qsl(parts.query) if _SECRET.search(k) and v]
    return [s for s in found if len(s) > 1]


def without_secrets(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` replaced by ``***``."""
    for secret in secrets_of(url):
        text = text.replace(secret, "***").replace(urllib.parse.quote(secret, safe=""), "***")
    return text


def open_storage(settings: SweepSettings) -> optuna.storages.BaseStorage:
    """The study's storage: the journal file in the sweep folder, or the database of ``--storage``."""
    if settings.storage is None:
        from optuna.storages.journal import JournalStorage

        from ignite_mlp.sweep.journal import SweepJournal

        backend = SweepJournal(Path(settings.sweep_dir) / "journal.log")
        backend.mend()  # before Optuna replays it: a damaged tail is set aside, reported in backend.notes
        return JournalStorage(backend)
    return open_database(settings.storage, settings.heartbeat_interval, settings.grace_period)


def open_database(url: str, heartbeat_interval: int, grace_period: int) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage on ``url``, with heartbeats and the retry of a dead worker's trial;
    a lost race to create the tables is retried, anything else is one line."""
    import optuna

    for attempt in range(CREATE_TRIES):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, **retry_callback()
                )
        except ImportError as e:
            driver = (e.__cause__ and getattr(e.__cause__, "name", None)) or "its driver"
            raise UserError(
                f"--storage {public_url(url)}: the database driver ({driver}) is not installed; "
                "pip install 'ignite_mlp[sweep]' (psycopg 3 for postgresql://)"
            ) from None
        except Exception as e:  # SQLAlchemy's many error classes: bad URL, no server, bad password, a race
            reason = without_secrets(_first_line(e), url)
            if _RACE.search(reason) and attempt + 1 < CREATE_TRIES:
                time.sleep(0.2 + random.random() * (attempt + 1) * 0.3)  # the winner is creating the tables
                continue
            raise UserError(
                f"--storage {public_url(url)}: cannot open the database ({reason}); check the URL and the server"
            ) from None
    raise AssertionError("unreachable")


def sampler_seed(seed: int | None, worker: int, existing: int) -> int | None:
    """The sampler's seed for a worker joining a study of ``existing`` trials: a continued study
    does not propose its first trials' parameters again.

    >>> sampler_seed(0, 0, 0) != sampler_seed(0, 0, 4) != sampler_seed(0, 1, 4)
    True
    """
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])


def open_study(settings: SweepSettings, worker: int = 0, create: bool = True) -> optuna.Study:
    """Create the study, or load it to continue: the same command on any machine joins it."""
    import optuna

    storage = open_storage(settings)
    if not create:
        try:
            return optuna.load_study(study_name=settings.study_name, storage=storage)
        except KeyError:
            raise UserError(
                f"--study {settings.study_name}: no such study in {settings.where()}; give the --study and "
                "--storage (or --sweep-dir) the sweep ran with"
            ) from None
    names = [s.study_name for s in storage.get_all_studies()]
    existing = (
        len(storage.get_all_trials(storage.get_study_id_from_name(settings.study_name), deepcopy=False))
        if settings.study_name in names
        else 0
    )
    sampler = optuna.samplers.TPESampler(seed=sampler_seed(settings.seed, worker, existing))
    if settings.study_name in names:  # loaded, not created again: the journal gets no record for nothing
        return optuna.load_study(
            study_name=settings.study_name, storage=storage, sampler=sampler, pruner=make_pruner(settings.pruner)
        )
    return optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(settings.pruner),
        direction="maximize",
        load_if_exists=True,  # another worker may create it first
    )


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Median (once 3 trials finished, from the 2nd epoch on: the 1st is noisy), Hyperband, or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def mend_line(study: optuna.Study) -> list[str]:
    """The journal's one-line damage reports, when the study's storage mended any."""

    backend = getattr(study._storage, "_backend", None)  # noqa: SLF001 (JournalStorage keeps it there)
    return list(getattr(backend, "notes", []))


def retry_callback() -> dict[str, object]:
    """Optuna's callback that queues a dead worker's trial again, under its argument's name (renamed in 4.9)."""
    import inspect

    import optuna

    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    name = (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )
    return {name: retry(max_retry=3)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
