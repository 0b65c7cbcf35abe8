"""The study behind a sweep: opened or created, checked against what it was started with, and run
to exactly ``--trials`` finished trials.

What a sweep decides, it decides once, at its first start, and keeps in the study (its user
attribute ``sweep``): the data's absolute path and fingerprint, the validation split in images,
the search space, the precision every trial computes in, and the settings it ran with. A
continued study takes them from there; one continued on other data, another split or another
space is refused. A sweep folder belongs to one study (``sweep.json`` names it, with the study's
own id): a folder holding another study's trials is refused, so no trial folder is overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from ignite_mlp.errors import UserError
from ignite_mlp.files import write_json_atomic
from ignite_mlp.sweep.locks import LOCKS, own_folder
from ignite_mlp.sweep.settings import JOURNAL, VAL_CAP, VAL_FRACTION, Plan, SweepSettings, absolute
from ignite_mlp.sweep.space import (
    SearchSpace,
    check_against_data,
    enqueue,
    load_space,
    parse_space,
    read_space,
)
from ignite_mlp.sweep.storage import mend_line, open_study, public_url

RECORD = "sweep.json"
ATTR = "sweep"


def settings_dict(settings: SweepSettings) -> dict[str, Any]:
    """The settings as recorded in sweep.json and best.json (the storage URL without its secrets)."""
    return {**dataclasses.asdict(settings), "storage": public_url(settings.storage)}


def check_folder(settings: SweepSettings, create: bool) -> None:
    """Refuse a sweep folder that is a file, holds a link where the sweep writes, or cannot be
    written; make it when ``create`` (else a missing one is refused too)."""
    folder = Path(settings.sweep_dir)
    try:
        os.lstat(folder)
    except FileNotFoundError:
        if not create:
            raise UserError(f"--sweep-dir {folder}: no such folder; give the folder the sweep ran in") from None
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise UserError(f"--sweep-dir {folder}: cannot be made ({e.strerror}); give another --sweep-dir") from None
    try:
        mode = os.stat(folder).st_mode
    except OSError as e:  # a link to nothing, a folder one cannot enter
        raise UserError(f"--sweep-dir {folder}: cannot be used ({e.strerror}); give another --sweep-dir") from None
    if not stat.S_ISDIR(mode):
        raise UserError(f"--sweep-dir {folder}: is a file, not a folder; give a folder for the sweep")
    for entry in folder.iterdir():
        # Optuna's journal lock is a link to the journal by design (held while a record is written).
        optuna_lock = entry.name == JOURNAL + ".lock" and os.readlink(entry) == str(folder / JOURNAL)
        if entry.is_symlink() and _owned(entry.name) and not optuna_lock:
            raise UserError(
                f"--sweep-dir {folder}: {entry.name} is a symbolic link; a sweep writes only its own files: remove it"
            )
    if create and not os.access(folder, os.W_OK):
        raise UserError(f"--sweep-dir {folder}: cannot be written; give a folder this user can write")
    if settings.storage is None:
        from ignite_mlp.sweep.journal import refuse_odd_journal

        refuse_odd_journal(folder / JOURNAL)
    locks = folder / LOCKS
    if locks.is_dir() and not locks.is_symlink():
        links = [p.name for p in locks.iterdir() if p.is_symlink()]
        if links:
            raise UserError(f"--sweep-dir {folder}: {LOCKS}/{links[0]} is a symbolic link; remove it")


def _owned(name: str) -> bool:
    """The names a sweep writes in its folder (Optuna's journal lock is a link by design)."""
    return (
        name in (JOURNAL, JOURNAL + ".lock", RECORD, LOCKS, "best.json", "best.toml")
        or name.startswith(("trial-", JOURNAL + ".damaged-"))
        or name.endswith(".png")
    )


def claim_folder(study: optuna.Study, settings: SweepSettings) -> None:
    """Refuse a sweep folder that holds another study's trials (their folders would be
    overwritten): its ``sweep.json`` names another study or storage, or it holds a trial folder
    this study never ran. Both checks read only what is there, so workers starting together agree."""
    folder = Path(settings.sweep_dir)
    saved: Any = {}
    if (folder / RECORD).is_file():
        try:
            saved = json.loads((folder / RECORD).read_bytes())
        except (OSError, ValueError):
            saved = {}
    saved = saved if isinstance(saved, dict) else {}
    mine = {"study": settings.study_name, "storage": public_url(settings.storage)}
    if saved and any(saved.get(k) != v for k, v in mine.items()):
        where = saved.get("storage") or "its journal"
        raise UserError(
            f"--sweep-dir {folder}: holds the trials of {saved.get('study')!r} on {where}; continue that one "
            "with its --study and --storage, or give another --sweep-dir for this one"
        )
    refuse_foreign_trials(folder, {t.number for t in study.get_trials(deepcopy=False)}, settings.study_name)


def refuse_foreign_trials(folder: Path, ran: set[int], study_name: str) -> None:
    """Refuse ``folder`` when it holds a trial folder whose number is not among ``ran``."""
    foreign = sorted(p.name for p in folder.iterdir() if _trial_number(p.name) not in ran | {None})
    if foreign:
        raise UserError(
            f"--sweep-dir {folder}: holds {foreign[0]}, a trial study {study_name!r} never ran (another "
            "study's?); give another --sweep-dir, or move those folders away"
        )


def refuse_foreign_study(study: optuna.Study, saved: dict[str, Any] | None) -> None:
    """Refuse to join a study the sweep did not make: one that minimises, or that holds run
    trials but no sweep record (trials only queued, with ``enqueue_trial``, are welcome)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    ran = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    if study.directions != [StudyDirection.MAXIMIZE] or (saved is None and ran):
        raise UserError(
            f"--study {study.study_name}: a study of that name is there, not made by ignite-mlp sweep "
            "(it minimises, or holds trials without the sweep's record); give another --study"
        )


def _trial_number(name: str) -> int | None:
    """
    >>> _trial_number("trial-0012"), _trial_number("trial-x"), _trial_number("best.json")
    (12, None, None)
    """
    match = re.fullmatch(r"trial-(\d{4,})", name)
    return int(match.group(1)) if match else None


@dataclasses.dataclass(frozen=True)
class Decided:
    """What the sweep decided at its first start (kept in the study)."""

    data: str
    val_count: int
    fingerprint: str
    precision: str | None
    precision_reason: str


def split_count(given: float | None, dataset: Any) -> int:
    """The images ``--val-split`` holds out of ``dataset`` (the default's when ``given`` is None),
    refused when it is none, all, or every image of a class."""
    import torch

    from ignite_mlp.data.split import check_split, validation_count

    train_size = len(dataset.train_labels)
    given = min(VAL_CAP, max(1, int(VAL_FRACTION * train_size))) if given is None else given
    count = validation_count(given, train_size)
    check_split(torch.bincount(dataset.train_labels, minlength=dataset.num_classes).tolist(), count, dataset.classes)
    return count


def decide(settings: SweepSettings, space: SearchSpace, dataset: Any, saved: dict[str, Any] | None) -> Decided:
    """The split, the fingerprint and the precision: the study's when it has them, else decided now."""
    given = settings.val_split if settings.val_split is not None or saved is None else saved["val_split"]
    count = split_count(given, dataset)
    fingerprint = dataset.fingerprint  # the data's identity, as every run records it
    if saved is not None:
        if saved.get("data_fingerprint", fingerprint) != fingerprint:
            raise UserError(
                f"--data {settings.data}: study {settings.study_name!r} ran its trials on other data "
                f"({saved.get('data')}); give that data, or another --study for this data"
            )
        if split_count(saved["val_split"], dataset) != count:
            raise UserError(
                f"--val-split {given:g}: study {settings.study_name!r} scores its trials on {saved['val_split']:g} "
                f"held-out images; pass --val-split {saved['val_split']:g} (or leave it out) to continue it"
            )
        if "precision" in saved:
            return Decided(settings.data, count, fingerprint, saved["precision"], saved.get("precision_reason", ""))
    precision, reason = decide_precision(space, settings.device)
    return Decided(settings.data, count, fingerprint, precision, reason)


def decide_precision(space: SearchSpace, device: str) -> tuple[str | None, str]:
    """The precision of every trial, decided once: None when the space searches it (each trial
    then asks for its own), the space's when it fixes one, else the rule's for this device."""
    if any(p.name == "precision" for p in space.params):
        return None, "searched by the space"
    fixed = space.fixed.get("precision", "auto")
    if fixed != "auto":
        return fixed, f"precision = {fixed!r} in the space"
    from ignite_mlp.config.train_config import resolve_device
    from ignite_mlp.engine.precision import choose_precision

    chosen = choose_precision("auto", resolve_device(device))
    return chosen.name, chosen.reason


def record_study(study: optuna.Study, settings: SweepSettings, raw_space: dict[str, Any], decided: Decided) -> None:
    """Keep in the study (and in sweep.json) what every report and continuation reads back; refuse
    a continuation with another space."""
    saved = study.user_attrs.get(ATTR)
    if saved is not None and saved.get("space") != raw_space:
        # Trials proposed from another space would be compared as if they were one search.
        raise UserError(
            f"--space {settings.space}: study {study.study_name!r} searches another space; give the file it was "
            "started with, or another --study for this one"
        )
    record = {
        "data": decided.data,
        "data_fingerprint": decided.fingerprint,
        "val_split": decided.val_count,
        "space": raw_space,
        "precision": decided.precision,
        "precision_reason": decided.precision_reason,
        "settings": settings_dict(settings),
    }
    if saved != record:
        study.set_user_attr(ATTR, record)
    public = {k: v for k, v in record.items() if k != "space"}
    write_json_atomic(
        Path(settings.sweep_dir) / RECORD,
        {"study": settings.study_name, "storage": public_url(settings.storage), **public},
    )


def study_record(study: optuna.Study) -> tuple[dict[str, Any], SearchSpace]:
    """What the study keeps of its sweep, and its space (for a report from any machine)."""
    saved = study.user_attrs.get(ATTR)
    if not isinstance(saved, dict):
        raise UserError(f"study {study.study_name!r} was not made by ignite-mlp sweep: nothing to report")
    return saved, parse_space(saved["space"], "(saved in the study)")


def prepare(settings: SweepSettings, write: Callable[[str], None]) -> tuple[Plan, optuna.Study]:
    """Everything a sweep checks and decides before its first trial; the plan and the study."""
    from ignite_mlp.data import load_dataset

    raw_space = read_space(settings.space)
    space = load_space(settings.space)  # a bad file fails here, before anything is written
    if os.path.lexists(settings.sweep_dir):  # links and odd files refused before the data is read
        check_folder(settings, create=False)
    dataset = load_dataset(settings.data, settings.cache_dir, progress="off")  # a wrong --data: nothing made
    check_against_data(space, dataset.image_shape, dataset.num_classes, settings.space)
    split_count(settings.val_split, dataset)  # a bad split is refused before anything is made
    if settings.storage is not None:  # a database that cannot be opened: refused before the folder is made
        study = open_study(settings)
    check_folder(settings, create=True)
    if settings.storage is None:
        if not os.path.lexists(settings.journal):  # a new study: no trial folder may be there yet
            refuse_foreign_trials(Path(settings.sweep_dir), set(), settings.study_name)
        study = open_study(settings)  # created once here, so workers only load it
    for note in mend_line(study):
        write(f"ignite-mlp: {note}")
    claim_folder(study, settings)
    saved = study.user_attrs.get(ATTR)
    refuse_foreign_study(study, saved)
    decided = decide(settings, space, dataset, saved)
    record_study(study, settings, raw_space, decided)
    enqueue(study, space)  # here, before any worker starts, so each point is queued once
    own_folder(Path(settings.sweep_dir) / LOCKS)
    return Plan(settings, decided.val_count, decided.precision), study


def run_sweep(settings: SweepSettings, write: Callable[[str], None] = print) -> optuna.Study:
    """Run the study to ``settings.trials`` finished trials with ``settings.jobs`` worker
    processes (this process alone with one) and return it. Ctrl-C: see :mod:`.workers`."""
    import signal

    from ignite_mlp.sweep.objective import StopFlag
    from ignite_mlp.sweep.progress import Display, Monitor
    from ignite_mlp.sweep.workers import count, run_worker, spawn_workers

    settings = absolute(settings)
    settings.check()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan, study = prepare(settings, write)
    space = load_space(settings.space)
    counts = count(study)
    write(
        f"sweep: study {settings.study_name!r} on {settings.where()}: {counts.finished} of {settings.trials} trials "
        f"finished, {len(space.params)} options searched, {settings.jobs} worker(s), validation {plan.val_count} "
        f"images, precision {plan.precision or 'searched'}"
    )
    display = Display(write=None if write is print else write)
    monitor = Monitor(study, settings.trials, settings.jobs, epochs_of(space), display)
    stop = StopFlag()
    previous = signal.signal(signal.SIGINT, stop)
    try:
        if settings.jobs == 1:
            monitor.start()
            try:
                run_worker(plan, 0, display.line, stop)
            finally:
                monitor.stop()
            return study
        workers = [p for p in spawn_workers(plan, stop) if p.pid is not None]  # the ones started
        while any(p.is_alive() for p in workers):
            monitor.poll()
            for p in workers:
                p.join(timeout=0.5 / len(workers))
        monitor.stop()
    finally:
        signal.signal(signal.SIGINT, previous)
    failed = [p for p in workers if p.exitcode not in (0, None)]
    if stop.requested or any(p.exitcode == 130 for p in failed):
        from ignite_mlp.sweep.objective import SweepStopped

        raise SweepStopped("stopped by Ctrl-C")
    if failed and count(study).finished < settings.trials:
        names = ", ".join(p.name for p in failed)
        raise UserError(f"{names} stopped with an error (see above); run the same command to continue")
    return study


def epochs_of(space: SearchSpace) -> int | None:
    """The epochs every trial runs, when the space fixes them (for the status line)."""
    from ignite_mlp.config.recipes import RECIPES
    from ignite_mlp.config.train_config import TrainConfig

    if any(p.name == "epochs" for p in space.params):
        return None
    recipe = space.fixed.get("recipe", "tutorial")
    return int(space.fixed.get("epochs", RECIPES.get(recipe, {}).get("epochs", TrainConfig.epochs)))


def report_study(settings: SweepSettings) -> tuple[optuna.Study, dict[str, Any], SearchSpace]:
    """The study ``--report`` reports on: nothing is made where there is no sweep."""
    settings = absolute(settings)
    settings.check_storage()
    # With a database the report is written into the folder given; a journal's folder must exist.
    check_folder(settings, create=settings.storage is not None)
    if settings.storage is None:
        if not os.path.lexists(settings.journal):
            raise UserError(f"--sweep-dir {settings.sweep_dir}: no sweep there ({JOURNAL} missing); give its folder")
    study = open_study(settings, create=False)
    for note in mend_line(study):
        print(f"ignite-mlp: {note}", file=sys.stderr)
    saved, space = study_record(study)
    return study, saved, space
