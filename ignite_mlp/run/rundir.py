"""A run directory: the one module that names a run's files, reads them (checked) and writes them.

Everything a command reads from a run goes through a checked reader, so a damaged or tampered
file is refused with one line (a :class:`UserError`), never a traceback and never code run: the
configuration is checked field by field (:mod:`ignite_mlp.run.record`), checkpoints and the
whitening are loaded with ``weights_only=True`` and must hold plain tensors of the shapes the run
implies (:mod:`ignite_mlp.run.checkpoint_io`). Files are written atomically.

A command that writes into a run holds its lock (:meth:`RunDir.lock`, a :class:`RunLock`: an OS
lock that dies with its process), so two writers never mix their files. Imports no Ignite:
``predict`` and ``export`` use it.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite_mlp import checkpoint_names
from ignite_mlp.config.train_config import TrainConfig, resume_from
from ignite_mlp.data.whitening import Whitening
from ignite_mlp.errors import UserError
from ignite_mlp.files import write_atomic, write_json_atomic
from ignite_mlp.locks import FileLock, LockHeld, LockUnsteady, PidNotWritten
from ignite_mlp.model import MLP
from ignite_mlp.run.checkpoint_io import (
    check_model_shapes,
    evaluation_weights,
    read_whitening_file,
    refuse_non_finite,
    safe_load,
    whitening_bytes,
)
from ignite_mlp.run.record import RunRecord, read_record

CONFIG = "config.json"  # the run's configuration, its data's classes and image shape, its device
HISTORY = "history.json"  # the metrics of every epoch
RESUMES = "resumes.json"  # when the run was resumed, from which checkpoint, what changed
WHITENING = "whitening.pt"  # --whiten: the statistics it trained with
CURVES = "curves.png"
LR_FINDER = "lr_finder.png"  # --lr auto, or lr-find --run-dir
CONFUSION = "confusion_matrix.png"  # evaluate
ONNX = "model.onnx"  # export --format onnx
TORCHSCRIPT = "model.torchscript.pt"  # export --format torchscript
CHECKPOINTS = "checkpoints"
LOCK = ".lock"  # held by the process writing into the run; holds its pid
# Made from one checkpoint after training (evaluate, export): stale once a resume trains on.
FROM_A_CHECKPOINT = (CONFUSION, ONNX, TORCHSCRIPT)
# Every file a run owns (besides what CHECKPOINTS holds and TensorBoard's event files).
FILES = (CONFIG, HISTORY, RESUMES, WHITENING, CURVES, LR_FINDER, CONFUSION, ONNX, TORCHSCRIPT, LOCK)
# TensorBoard's event files; the temporary files of atomic writes (see ignite_mlp.files) and
# of Ignite's checkpoint saver, left behind only by a process killed mid-write.
_OWNED_PATTERNS = (r"events\.out\.tfevents\..*", r"\..+\.tmp", r"\.write-test")
_CHECKPOINT_PATTERNS = (r".*\.pt", r"\..+\.tmp", r"tmp\w+")


class RunDir:
    """The files of the run in ``path``.

    >>> run = RunDir("runs/a")
    >>> run.config.name, run.checkpoints.as_posix()
    ('config.json', 'runs/a/checkpoints')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG)
    history = property(lambda self: self.path / HISTORY)
    resumes = property(lambda self: self.path / RESUMES)
    whitening = property(lambda self: self.path / WHITENING)
    curves = property(lambda self: self.path / CURVES)
    lr_finder = property(lambda self: self.path / LR_FINDER)
    confusion_matrix = property(lambda self: self.path / CONFUSION)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)

    def remove_stale_outputs(self) -> list[str]:
        """Delete the files made from one of the run's checkpoints (:data:`FROM_A_CHECKPOINT`): a
        resumed run trains on, and they would no longer be what its best checkpoint computes.
        Returns the names removed. Call with the lock held."""
        removed = []
        for name in FROM_A_CHECKPOINT:
            path = self.path / name
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(name)
        return removed

    def export_file(self, fmt: str) -> Path:
        """Where ``export --format fmt`` writes by default."""
        return self.path / {"onnx": ONNX, "torchscript": TORCHSCRIPT}[fmt]

    def is_run(self) -> bool:
        """Whether a run lives here (its configuration file exists)."""
        return self.config.is_file()

    # ------------------------------------------------------------------ what the run owns

    def owns(self, name: str, in_checkpoints: bool = False) -> bool:
        """Whether ``name`` (an entry of the run directory, or of its checkpoints folder) is the run's.

        >>> run = RunDir("r")
        >>> run.owns("model.onnx"), run.owns("events.out.tfevents.1.host"), run.owns("notes.txt")
        (True, True, False)
        """
        if in_checkpoints:
            return any(re.fullmatch(p, name) for p in _CHECKPOINT_PATTERNS)
        return name in FILES or name == CHECKPOINTS or any(re.fullmatch(p, name) for p in _OWNED_PATTERNS)

    def foreign(self) -> list[Path]:
        """What is in the folder that no run writes (so ``--overwrite`` must not delete it)."""
        if not self.path.is_dir():
            return []
        # The checkpoints folder is the one folder a run makes; an owned name that is a folder is not the run's.
        found = [
            p
            for p in self.path.iterdir()
            if not self.owns(p.name) or (p.name == CHECKPOINTS) != (p.is_dir() and not p.is_symlink())
        ]
        if self.checkpoints.is_dir():
            found += [p for p in self.checkpoints.iterdir() if not (p.is_file() and self.owns(p.name, True))]
        return sorted(found)

    def refuse_unusable(self, overwrite: bool) -> None:
        """Refuse to start a new run here when that could destroy or mix with something else:
        ``/`` or the home folder, a folder holding a run (unless ``overwrite``), a folder holding
        anything a run does not write, a file."""
        flag = f"--run-dir {self.path}"
        resolved = self.path.expanduser().resolve()
        try:
            home = Path.home().resolve()
        except RuntimeError:  # no home folder known: nothing to protect
            home = None
        if resolved == Path(resolved.anchor) or resolved == home:
            raise UserError(
                f"{flag}: refusing to write a run into {resolved}; give a folder of its own, e.g. runs/first"
            )
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{flag}: is a file, not a folder; choose another --run-dir")
        if self.is_run() and not overwrite:
            raise UserError(
                f"{flag} already holds a run; choose another --run-dir, pass --overwrite, "
                f"or continue it with --resume {self.path}"
            )
        foreign = self.foreign()
        if foreign and self.is_run():
            raise UserError(
                f"{flag}: --overwrite would delete only the run's files, but the folder also holds "
                f"{foreign[0].name}{' and more' if len(foreign) > 1 else ''}; "
                "move those away or choose another --run-dir"
            )
        if foreign:
            raise UserError(
                f"{flag}: the folder holds files and no run ({foreign[0].name}"
                f"{', ...' if len(foreign) > 1 else ''}); choose an empty or new folder"
            )

    def prepare(self, overwrite: bool) -> None:
        """Make the folder ready for a new run: refuse what :meth:`refuse_unusable` refuses; with
        ``overwrite``, delete every file of the old run (and only those). Call with the lock held."""
        self.refuse_unusable(overwrite)
        if not overwrite:
            return
        # The lock file stays: deleting it would let another process lock a new one beside ours.
        for entry in self.path.iterdir():
            if entry.name == CHECKPOINTS:
                for old in entry.iterdir():
                    old.unlink()
            elif entry.name != LOCK:
                entry.unlink()

    # --------------------------------------------------------------------------- the lock

    def lock(self) -> RunLock:
        """The run's exclusive lock, taken now: ``with RunDir(path).lock(): ...`` (see :class:`RunLock`)."""
        held = RunLock()
        held.acquire(self.path)
        return held

    # ------------------------------------------------------------------ the configuration

    def read_config(self) -> RunRecord:
        """The run's configuration file, checked (see :func:`~ignite_mlp.run.record.read_record`)."""
        return read_record(self.config, self.path)

    def write_config(self, values: Mapping[str, Any]) -> None:
        write_json_atomic(self.config, dict(values))

    def resume_config(self, **overrides: Any) -> TrainConfig:
        """The config the run was trained with, set up to resume it; ``overrides`` change fields
        (e.g. ``epochs=80`` to train further). Its handlers are not attached again unless named
        in ``overrides`` (see :func:`~ignite_mlp.config.train_config.resume_from`)."""
        return resume_from(self.read_config().config, str(self.path), overrides)

    # -------------------------------------------------------------------------- checkpoints

    def latest_checkpoint(self, required: bool = True) -> Path | None:
        """The resumable checkpoint with the highest iteration."""
        found = []
        for path in self.checkpoints.glob("*.pt"):
            resumable = checkpoint_names.resumable(path.name)  # (iteration, mid-epoch?)
            if resumable:
                found.append((*resumable, path))
        if not found:
            if required:
                raise UserError(f"--resume {self.path}: no checkpoint in {self.checkpoints}; start a new run instead")
            return None
        return max(found)[2]

    def best_checkpoint(self) -> Path | None:
        """The best-model file: the highest recorded score, and of equal scores the earliest
        epoch (what Ignite's ``Checkpoint`` keeps), never the names' sort order
        (``best_model_9_...`` sorts after ``best_model_10_...``). Normally there is one file; two
        are left when a run was killed between writing a new best and deleting the old one.

        >>> import tempfile, pathlib
        >>> run = RunDir(tempfile.mkdtemp()); run.checkpoints.mkdir()
        >>> for name in ("best_model_9_val_acc=50.0000.pt", "best_model_10_val_acc=61.2500.pt"):
        ...     _ = (run.checkpoints / name).write_bytes(b"")
        >>> run.best_checkpoint().name
        'best_model_10_val_acc=61.2500.pt'
        """
        found = []
        for path in self.checkpoints.glob(checkpoint_names.pattern(checkpoint_names.BEST)):
            score, epoch = checkpoint_names.best_score(path.name), checkpoint_names.best_epoch(path.name)
            if score is not None and epoch is not None:
                found.append((score, -epoch, path))
        return max(found)[2] if found else None

    def load_model(self, checkpoint: Path, record: RunRecord, image_shape: tuple[int, ...], classes: int) -> MLP:
        """The run's model for ``image_shape`` inputs and ``classes`` outputs, with the weights
        ``checkpoint`` validated (its moving average with --ema-momentum), in eval mode on the CPU."""
        channels, height, width = image_shape
        model = MLP.from_config(record.config, channels * height * width, classes)
        weights = evaluation_weights(safe_load(checkpoint))
        fix = f"use the checkpoint with its own run directory ({self.path}) and data of its image shape"
        check_model_shapes(model, weights, checkpoint, fix)
        refuse_non_finite(weights, checkpoint, "use another checkpoint (or train again)")
        model.load_state_dict(weights)
        return model.eval()

    # ---------------------------------------------------------------------------- whitening

    def read_whitening(self, features: int | None = None) -> Whitening:
        """The whitening the run trained with; ``features``: the values of one image (C * H * W)."""
        return read_whitening_file(self.whitening, features)

    def write_whitening(self, whitening: Whitening) -> Path:
        write_atomic(self.whitening, whitening_bytes(whitening))
        return self.whitening

    # ------------------------------------------------------------------------ other records

    def read_resumes(self) -> list[Any]:
        """Every resume recorded so far (an unreadable record starts afresh: it is only a log)."""
        try:
            values = json.loads(self.resumes.read_bytes())
        except (OSError, ValueError, RecursionError):
            return []
        return values if isinstance(values, list) else []

    def write_resumes(self, entries: list[Any]) -> None:
        write_json_atomic(self.resumes, entries)


# ------------------------------------------------------------------------------------ the lock


class RunLock:
    """The run directory's lock: a :class:`~ignite_mlp.locks.FileLock` on its :data:`LOCK` file,
    refused at once (not waited for) with a line naming the holder's pid.

    The OS drops it when its process ends, however it ends: a killed run blocks nothing.
    :meth:`acquire` may come later than ``with`` (a new run's folder exists only once its data is
    loaded); leaving the block releases it and removes the file, so a command leaves nothing
    behind in the run but what it wrote (a killed holder's file stays, and is simply locked anew
    by the next writer).
    """

    # Whether a locked descriptor is still the file at the lock's name (the retry's question).
    _is_current = staticmethod(FileLock._is_current)

    def __init__(self) -> None:
        self._lock: FileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self, run_dir: Path) -> None:
        if self._lock is not None:
            return
        lock = FileLock(Path(run_dir) / LOCK)
        try:
            lock.acquire(blocking=False)
        except LockHeld as e:
            raise UserError(
                f"{run_dir} is in use by another ignite-mlp process (pid {e.holder}); wait for it to finish "
                "or stop it, then run again"
            ) from None
        except LockUnsteady:
            raise UserError(f"{run_dir}: the run's lock keeps changing hands; run again") from None
        except PidNotWritten as e:
            raise UserError(
                f"{run_dir}: cannot write the run's lock ({e.strerror}); free some space and run again"
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"{lock.path}: is a symlink, not the run's lock; delete it") from None
            raise UserError(f"{run_dir}: cannot lock the run ({e.strerror}); choose a writable folder") from None
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------- finding runs


def find_run(spec: str, runs_root: str | Path = "runs") -> RunDir:
    """``auto`` means the newest resumable run under ``runs_root``; anything else is a run directory."""
    if spec == "auto":
        root = Path(runs_root)
        runs = [RunDir(p.parent) for p in root.glob(f"*/{CONFIG}")]
        runs = [r for r in runs if r.latest_checkpoint(required=False)]
        if not runs:
            raise UserError(f"--resume auto: no resumable run under {root}/; give the run directory instead")
        return max(runs, key=lambda r: r.config.stat().st_mtime)
    run = RunDir(spec)
    if not run.is_run():
        raise UserError(f"--resume {spec}: no run there ({CONFIG} missing); give a run directory or auto")
    return run


def find_checkpoint(target: str | Path) -> tuple[RunDir, Path]:
    """(run, checkpoint) for a run directory (its best checkpoint) or a checkpoint file."""
    path = Path(target)
    if path.is_file():
        folder = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
        return RunDir(folder), path
    run = RunDir(path)
    if not run.is_run():
        raise UserError(f"{target}: neither a run directory (no {CONFIG}) nor a checkpoint file")
    best = run.best_checkpoint()
    if best is None:
        raise UserError(f"{target}: no best checkpoint in {run.checkpoints}; has an epoch finished?")
    return run, best
