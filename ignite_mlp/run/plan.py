"""Phase 1 of a run: resolve what will happen, before any data is read or any file is written.

:func:`resolve_plan` validates the config, applies the overfit check's overrides, checks the
process count, picks the device, loads the user's handlers and, on ``--resume``, reads the
checkpoint (into a :class:`~ignite_mlp.run.resume.Resume`). Everything that can fail on bad input
without the data fails here, fast.

The configuration a run trains with is made here too (:func:`config_for_command`,
:func:`config_to_train`): the recipe, a TOML file and the flags, and on a resume the run's own
saved configuration under them, by one path for the command line and for Python.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ignite_mlp.config.constraints import per_process_batch
from ignite_mlp.config.train_config import TrainConfig, config_from_sources, given_fields, merge_sources, resolve_device
from ignite_mlp.distributed import ranks
from ignite_mlp.engine.precision import Precision, recorded_precision, resolve_precision
from ignite_mlp.errors import UserError
from ignite_mlp.handlers.extensions import load_handler
from ignite_mlp.progress import progress_mode, silent
from ignite_mlp.run.resume import Resume
from ignite_mlp.run.rundir import RunDir, RunLock, find_run
from ignite_mlp.run.spec import run_epochs


@dataclass
class RunPlan:
    """What a run will do, as far as it is known before the data: the first part of its
    :class:`~ignite_mlp.run.spec.RunSpec`, which completes it once the data are read."""

    config: TrainConfig
    device: torch.device
    run_dir: Path
    # User handlers, called as fn(trainer, evaluator, context) after the built-in ones.
    handlers: list[Callable[..., Any]]
    # Set on --resume: the one object that knows what the checkpoint holds.
    resume: Resume | None
    # Where the run's lines go: print on rank 0, nowhere on the other ranks.
    write: Callable[[str], None]
    distributed: bool
    # Rank 0 (or the only process): the one that writes files and prints.
    main: bool
    list_handlers: bool
    # "bar", "lines" or "off", resolved once: loading shows it, then training (see RunSpec.progress).
    progress: str = "off"
    # What the run trains in, decided here once (config.precision holds its name): see run_precision.
    precision: Precision = Precision("fp32", "--precision fp32")

    @property
    def max_epochs(self) -> int:
        return run_epochs(self.config)


def resolve_plan(
    config: TrainConfig,
    extra_handlers: Sequence[Callable[..., Any]] = (),
    write: Callable[[str], None] = print,
    list_handlers: bool = False,
    finder_plot: Path | None = None,
) -> RunPlan:
    """Check everything that can be checked without the data, and say how the run will go.

    ``finder_plot``: the plan of ``lr-find``, which writes only that plot: no run directory is
    made or refused and no handler loaded; on a run's folder (``config.run_dir``) the finder
    computes in the run's recorded precision, elsewhere in the one a new run would take."""
    config.validate()
    if config.overfit_batches:
        # The sanity check trains on fixed batches with nothing that fights memorisation.
        config = dataclasses.replace(config, dropout=0.0, weight_decay=0.0)
    distributed, main = ranks.world_size() > 1, ranks.is_main()
    if config.nproc_per_node > 1 and not distributed and not list_handlers:
        raise UserError(
            f"--nproc-per-node {config.nproc_per_node}: train() is one process; start the processes with "
            "ignite_mlp.distributed.launcher.launch(config) or the ignite-mlp command"
        )
    if distributed:
        per_process_batch(config.batch_size, ranks.world_size(), source="the process count")
    device = ranks.rank_device(config.device) if distributed else resolve_device(config.device)
    finder = finder_plot is not None
    handlers = [] if finder else [*extra_handlers, *(load_handler(spec) for spec in config.handlers)]  # fail fast
    # The checkpoint is read before the (slower) data loading, so a bad one fails fast.
    resume = Resume(Path(config.resume)) if config.resume else None
    recorded = resume.trained_with if resume is not None else None
    if finder and config.run_dir and RunDir(config.run_dir).is_run():
        recorded = RunDir(config.run_dir).read_config().values
    precision = run_precision(config, device, recorded)
    config = dataclasses.replace(config, precision=precision.name)
    if resume is not None:
        resume.check(config, run_epochs(config), ranks.world_size())
        note = resume.handler_note(config)
        if note and main:
            write(note)
        run_dir = resume.run_dir
    elif finder_plot is not None:
        run_dir = finder_plot.parent
    else:
        run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
        if not list_handlers:
            refuse_existing_run(run_dir, config.overwrite)  # early: before seconds of data loading
    return RunPlan(
        config=config,
        device=device,
        run_dir=run_dir,
        handlers=handlers,
        resume=resume,
        write=write if main else silent,
        distributed=distributed,
        main=main,
        list_handlers=list_handlers,
        progress=progress_mode(config.progress) if main else "off",
        precision=precision,
    )


def run_precision(config: TrainConfig, device: torch.device, recorded: Mapping[str, Any] | None = None) -> Precision:
    """The precision a run computes in: with a run's ``recorded`` configuration (a resume, lr-find on
    the run's folder) the recorded one (``--precision auto``, or the recorded name itself, as the
    CLI's resume reads it back) unless another is forced, which a resume then lists as a change;
    otherwise from the rule of the hardware (engine/precision.py)."""
    if recorded is not None:
        saved = recorded_precision(recorded, "auto")
        if config.precision in ("auto", saved.name):
            return saved
        return recorded_precision(recorded, config.precision)
    return resolve_precision(config.precision, device)


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def refuse_existing_run(path: Path, overwrite: bool) -> None:
    """Refuse a run directory a new run must not use (see :meth:`RunDir.refuse_unusable`): checked
    before the data is loaded, and again, under the run's lock, by :func:`prepare_run_dir`."""
    RunDir(path).refuse_unusable(overwrite)


def prepare_run_dir(path: Path, overwrite: bool, lock: RunLock | None = None) -> Path:
    """Create the run directory, take its ``lock`` (when given) and, with ``overwrite``, delete
    the old run's files; a folder a run must not use is refused (see :func:`refuse_existing_run`)."""
    run = RunDir(path)
    run.refuse_unusable(overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--run-dir {path}: cannot write there ({e.strerror}); choose a writable folder") from None
    if lock is not None:
        lock.acquire(path)
    run.prepare(overwrite)  # checked again under the lock: another process may have written meanwhile
    try:
        run.checkpoints.mkdir(exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--run-dir {path}: cannot write there ({e.strerror}); choose a writable folder") from None
    return path


# Set by the resume itself: the run's own folder, never overwritten.
_SET_BY_THE_RESUME = ("resume", "run_dir", "overwrite")


def config_for_command(cli_values: dict[str, Any], toml_path: str | None = None) -> TrainConfig:
    """:func:`~ignite_mlp.config.train_config.config_from_sources`, and with ``resume`` (from
    the flag or the file) the saved config of that run under the TOML file and flags."""
    values = merge_sources(cli_values, toml_path)
    if not values.get("resume"):
        return config_from_sources(values)
    return resumed_config(str(values["resume"]), values)


def resumed_config(resume: str, overrides: Mapping[str, Any]) -> TrainConfig:
    """The configuration that continues the run ``resume`` (a run directory, or ``auto``: the
    newest resumable run under ``runs/``): the one it saved, with ``overrides`` on top; its
    handlers are attached again only when ``overrides`` names them (see
    :meth:`~ignite_mlp.run.rundir.RunDir.resume_config`)."""
    run = find_run(resume)
    return run.resume_config(**{k: v for k, v in overrides.items() if k not in _SET_BY_THE_RESUME})


def config_to_train(config: TrainConfig) -> TrainConfig:
    """What :func:`~ignite_mlp.run.training.train` trains with. A new run's config, and one already
    made from its run (by :meth:`~ignite_mlp.run.rundir.RunDir.resume_config` or the CLI: its
    ``run_dir`` is the run it resumes), as they are; any other resume, such as
    ``TrainConfig(resume="runs/a", epochs=20)``, is the run's saved configuration under the fields
    the caller set (those that differ from the defaults: to set a field back to its default value,
    use ``RunDir(path).resume_config(field=value)``)."""
    if not config.resume or (config.run_dir == config.resume and config.resume != "auto"):
        return config
    return resumed_config(config.resume, given_fields(config))
