"""A run directory: the one module that names a run's files, reads them (checked) and writes them.

Everything a command reads from a run goes through a checked reader here, so a damaged or
tampered file is refused with one line (a :class:`UserError`), never a traceback and never
code run: the configuration is checked field by field against :class:`TrainConfig`'s own types
and ranges, checkpoints are loaded with ``weights_only=True`` and must hold plain tensors of the
shapes the configuration implies, the whitening must fit the run's images.

A command that writes into a run holds its lock (:meth:`RunDir.lock`, an OS lock that dies with
its process), so two writers never mix their files. Imports no Ignite: ``predict`` and
``export`` use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ignite_mlp.config.choices import PRECISIONS
from ignite_mlp.config.train_config import TrainConfig, merge_sources
from ignite_mlp.data.limits import check_pixels
from ignite_mlp.data.whitening import Whitening
from ignite_mlp.errors import UserError
from ignite_mlp.files import write_atomic, write_json_atomic
from ignite_mlp.model import MLP

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

# Written at each epoch's end (last_*) and when Ctrl-C stops a run mid-epoch (interrupted_*).
_RESUMABLE = re.compile(r"^(last_checkpoint|interrupted_checkpoint)_(\d+)\.pt$")
# Written by the best-model checkpoint (see ignite_mlp.handlers.builtin.attach_checkpoints).
_BEST = re.compile(r"^best_model_(\d+)_val_acc=(-?\d+(?:\.\d+)?)\.pt$")


@dataclass
class RunRecord:
    """A run's configuration file, checked: the config it trained with, the class names in label
    order and the image shape ``(C, H, W)`` (None for runs older than those records)."""

    config: TrainConfig
    classes: list[str] | None
    image_shape: tuple[int, int, int] | None
    values: dict[str, Any]  # the whole file, as read (its extra keys: resolved_device, world_size)


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
    lock_file = property(lambda self: self.path / LOCK)

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
        """The run's configuration file, checked; anything unexpected is a one-line UserError."""
        path = self.config
        if not path.is_file():
            raise UserError(f"{self.path}: no run there ({path.name} missing); give a run directory")
        try:
            values = json.loads(path.read_bytes())
        # (UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: arrays nested too deep)
        except (OSError, ValueError, RecursionError) as e:
            reason = "nested too deep" if isinstance(e, RecursionError) else e
            raise UserError(f"{path}: unreadable ({reason}); restore it from a copy or train again") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: holds a {type(values).__name__}, not a run's configuration; restore it")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        fields = {k: v for k, v in values.items() if k in known and k != "resume"}
        try:
            config = TrainConfig(**fields)
        except UserError as e:
            raise UserError(
                f"{path}: {e}".replace("fix the value in the flag or config file", "restore the file")
            ) from None
        classes = values.get("classes")
        if classes is not None:
            distinct = isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            if not distinct or len(set(classes)) != len(classes) or len(classes) < 1:
                raise UserError(f"{path}: classes must be a list of distinct names (got {classes!r}); restore the file")
        shape = values.get("image_shape")
        if shape is not None:
            ints = isinstance(shape, list) and all(type(v) is int and v > 0 for v in shape)
            if not ints or len(shape) != 3:
                raise UserError(f"{path}: image_shape must be three positive ints (got {shape!r}); restore the file")
            check_pixels(shape[2], shape[1], f"{path}: image_shape")  # no model sized for a bomb's pixels
        handlers = values.get("handlers", [])
        if not (isinstance(handlers, list) and all(isinstance(h, str) for h in handlers)):
            raise UserError(f"{path}: handlers must be a list of specs (got {handlers!r}); restore the file")
        fingerprint = values.get("data_fingerprint")
        if fingerprint is not None and not (
            isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{64}", fingerprint)
        ):
            raise UserError(
                f"{path}: data_fingerprint must be 64 hex digits (got {repr(fingerprint)[:40]}); restore it"
            )
        counts = values.get("data_counts")
        if counts is not None and not (
            isinstance(counts, dict) and all(type(counts.get(k)) is int and counts[k] >= 0 for k in ("train", "test"))
        ):
            raise UserError(
                f"{path}: data_counts must hold train and test counts (got {repr(counts)[:40]}); restore it"
            )
        precision = values.get("resolved_precision")  # (runs that recorded "precision": "auto" kept it here)
        if precision is not None and precision not in PRECISIONS:
            raise UserError(f"{path}: resolved_precision must be one of {PRECISIONS} (got {precision!r}); restore it")
        return RunRecord(
            config=config,
            classes=classes,
            image_shape=tuple(shape) if shape else None,  # type: ignore[arg-type]
            values=values,
        )

    def write_config(self, values: Mapping[str, Any]) -> None:
        write_json_atomic(self.config, dict(values))

    def resume_config(self, **overrides: Any) -> TrainConfig:
        """The config the run was trained with, set up to resume it; ``overrides`` change fields
        (e.g. ``epochs=80`` to train further). Its handlers are not attached again unless named
        in ``overrides`` (a run directory someone hands you must not run code)."""
        saved = self.read_config().config.to_dict()
        saved["handlers"] = []
        return TrainConfig(
            **{**saved, **overrides, "run_dir": str(self.path), "resume": str(self.path), "overwrite": False}
        )

    # -------------------------------------------------------------------------- checkpoints

    def latest_checkpoint(self, required: bool = True) -> Path | None:
        """The resumable checkpoint with the highest iteration."""
        found = []
        for path in self.checkpoints.glob("*.pt"):
            match = _RESUMABLE.match(path.name)
            if match:
                found.append((int(match.group(2)), match.group(1) == "interrupted_checkpoint", path))
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
        for path in self.checkpoints.glob("best_*.pt"):
            match = _BEST.match(path.name)
            if match:
                found.append((float(match.group(2)), -int(match.group(1)), path))
        return max(found)[2] if found else None

    def load_model(self, checkpoint: Path, record: RunRecord, image_shape: tuple[int, ...], classes: int) -> MLP:
        """The run's model for ``image_shape`` inputs and ``classes`` outputs, with the weights
        ``checkpoint`` validated (its moving average with --ema-momentum), in eval mode on the CPU."""
        channels, height, width = image_shape
        model = MLP.from_config(record.config, channels * height * width, classes)
        weights = validated_weights(safe_load(checkpoint))
        fix = f"use the checkpoint with its own run directory ({self.path}) and data of its image shape"
        check_model_shapes(model, weights, checkpoint, fix)
        refuse_non_finite(weights, checkpoint, "use another checkpoint (or train again)")
        model.load_state_dict(weights)
        return model.eval()

    # ---------------------------------------------------------------------------- whitening

    def read_whitening(self, features: int | None = None) -> Whitening:
        """The whitening the run trained with; ``features``: the values of one image (C * H * W)."""
        path = self.whitening
        try:
            state = _load_quietly(path)
            mean, matrix = state["mean"], state["matrix"]
            if not (_plain_tensor(mean) and _plain_tensor(matrix)):
                raise TypeError("not tensors")
        except FileNotFoundError:
            raise UserError(
                f"{path}: missing; a run with --whiten needs the whitening it trained with "
                "(a run trained without whitening cannot be resumed or evaluated with it)"
            ) from None
        except Exception as e:  # a corrupt or foreign file: say which, never unpickle it
            raise UserError(
                f"{path}: not a whitening file ({type(e).__name__}); training writes it: restore it or train again"
            ) from None
        d = mean.numel()
        if mean.ndim != 1 or tuple(matrix.shape) != (d, d):
            raise UserError(f"{path}: mean {tuple(mean.shape)} and matrix {tuple(matrix.shape)} differ; restore it")
        if features is not None and d != features:
            raise UserError(f"{path}: measured on images of {d} values, the run's have {features}; restore it")
        refuse_non_finite({"mean": mean, "matrix": matrix}, path, "restore it or train again")
        return Whitening(mean.float(), matrix.float())

    def write_whitening(self, whitening: Whitening) -> Path:
        buffer = io.BytesIO()
        torch.save(whitening.state_dict(), buffer)
        write_atomic(self.whitening, buffer.getvalue())
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
    """An exclusive ``flock`` on a run directory's lock file, with the holder's pid written in it.

    The OS drops it when its process ends, however it ends: a killed run blocks nothing. A second
    writer is refused with a line naming the holder's pid. :meth:`acquire` may come later than
    ``with`` (a new run's folder exists only once its data is loaded); leaving the block releases it
    and removes the file, so a command leaves nothing behind in the run but what it wrote (a killed
    holder's file stays, and is simply locked anew by the next writer).
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._path: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run_dir: Path) -> None:
        if self._fd is not None:
            return
        path = Path(run_dir) / LOCK
        for _ in range(100):  # a holder releasing meanwhile removes the file we locked: lock the new one
            fd = self._lock(path, run_dir)
            if self._is_current(fd, path):
                break
            os.close(fd)
        else:
            raise UserError(f"{run_dir}: the run's lock keeps changing hands; run again")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: let go, or the lock would stay held for this process's life
            path.unlink(missing_ok=True)
            os.close(fd)
            raise UserError(
                f"{run_dir}: cannot write the run's lock ({e.strerror}); free some space and run again"
            ) from None
        self._fd, self._path = fd, path

    @staticmethod
    def _is_current(fd: int, path: Path) -> bool:
        """Whether the locked file is still the one at ``path`` (not removed by a releasing holder)."""
        try:
            there = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    @staticmethod
    def _lock(path: Path, run_dir: Path) -> int:
        """Open ``path`` and take its flock, or refuse naming the holder."""
        try:
            # O_NOFOLLOW: a symlink planted at the lock's name is refused, never written through.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"{path}: is a symlink, not the run's lock; delete it") from None
            raise UserError(f"{run_dir}: cannot lock the run ({e.strerror}); choose a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{run_dir} is in use by another ignite-mlp process (pid {holder}); wait for it to finish "
                "or stop it, then run again"
            ) from None
        return fd

    def release(self) -> None:
        if self._fd is not None:
            if self._path is not None:
                self._path.unlink(missing_ok=True)  # while still held: the next writer locks a new file
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd, self._path = None, None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------- outputs and runs


def run_of(path: Path) -> RunDir | None:
    """The run whose folder (or checkpoints folder) ``path`` would be written into, or None."""
    parent = path.expanduser().absolute().parent.resolve()
    for folder in (parent, parent.parent if parent.name == CHECKPOINTS else None):
        if folder is not None and RunDir(folder).is_run():
            return RunDir(folder)
    return None


def _landing(out: Path) -> list[Path]:
    """Where writing ``out`` lands: the name itself (its folder resolved) and, for a symlink, its target."""
    named = out.expanduser().absolute().parent.resolve() / out.name
    return [named] if named == out.expanduser().resolve() else [named, out.expanduser().resolve()]


def refuse_run_file(out: str | Path, flag: str = "--out", allowed: tuple[str, ...] = ()) -> None:
    """Refuse an output path that would replace one of a run's own files (its configuration,
    a checkpoint, ...); ``allowed``: names the command itself writes there by default.
    A symlink is judged by its own name and by where it leads."""
    for target in _landing(Path(out)):
        run = run_of(target)
        if run is None or target.name in allowed:
            continue
        if target.parent.name == CHECKPOINTS or run.owns(target.name):
            raise UserError(
                f"{flag} {out}: would replace {target.name}, a file of the run in {run.path}; choose another --out"
            )


@contextlib.contextmanager
def writing(out: str | Path, flag: str = "--out", allowed: tuple[str, ...] = ()) -> Iterator[Path]:
    """Refuse ``out`` when it would replace one of a run's own files (see :func:`refuse_run_file`);
    when it lands in a run directory, hold that run's lock inside the block."""
    refuse_run_file(out, flag, allowed)
    run = run_of(Path(out))
    if run is None:
        yield Path(out)
        return
    with run.lock():
        yield Path(out)


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


def config_for_command(cli_values: dict[str, Any], toml_path: str | None = None) -> TrainConfig:
    """:func:`~ignite_mlp.config.train_config.config_from_sources`, and with ``resume`` (from
    the flag or the file) the saved config of that run under the TOML file and flags."""
    values = merge_sources(cli_values, toml_path)
    if not values.get("resume"):
        return TrainConfig.from_recipe(values.pop("recipe", "tutorial"), **values)
    run = find_run(str(values.pop("resume")))  # "auto" from the flag or the file alike
    values.pop("run_dir", None)
    return run.resume_config(**values)


# ----------------------------------------------------------------------------- checkpoints


def safe_load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, turning every failure into a clear UserError.

    A message never passes on torch's own advice to retry with ``weights_only=False``: that
    would run whatever code the file holds."""
    path = Path(path)
    if _is_torchscript(path):
        raise UserError(
            f"{path}: a TorchScript program, not a checkpoint, refused (it holds code); give a run's checkpoint"
        )
    try:
        state = _load_quietly(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a forbidden object: the bytes are simply not a valid checkpoint
            raise UserError(f"{path}: corrupt or truncated checkpoint; delete it or resume from another run") from None
        raise UserError(
            f"{path}: refused to load: it needs arbitrary unpickling ({found.group(1)}), which can run code; "
            "only load checkpoints written by ignite_mlp or another source you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = (
            "it holds objects other than tensors"
            if "weights_only" in str(e)
            else (str(e).splitlines() or [type(e).__name__])[0]
        )
        raise UserError(
            f"{path}: corrupt or truncated checkpoint ({reason}); delete it or resume from another run"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not an ignite_mlp checkpoint (holds a {type(state).__name__})")
    return state


def _load_quietly(path: Path) -> Any:
    """``torch.load(weights_only=True)`` without torch's warnings (one about checking a sparse
    tensor, say): the command's answer is its one line, and a sparse tensor is refused anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_torchscript(path: Path) -> bool:
    """Is ``path`` a TorchScript archive (``torch.jit.save``): a zip holding a ``code/`` folder?"""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def validated_weights(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights a checkpoint's run validated: a best checkpoint holds just them (the moving
    average, with --ema-momentum); a last one a dict with "model" and, with --ema-momentum,
    "ema_model", the weights that were validated."""
    if "ema_model" in state:
        return state["ema_model"]
    return state.get("model", state)


def check_model_shapes(
    model: nn.Module,
    saved: Any,
    source: Path,
    fix: str = "resume with the run's own --hidden-sizes (drop the flag) or start a new run",
) -> None:
    """Refuse saved weights that are not plain dense tensors, and name every parameter whose
    shape differs between ``model`` and the saved state dict, and ``fix``."""
    if not isinstance(saved, Mapping):
        raise UserError(f"{source}: holds a {type(saved).__name__} where the weights go; it is damaged: {fix}")
    for key, value in saved.items():
        if not _plain_tensor(value):
            raise UserError(
                f"{source}: {key} holds {_described(value)}; the checkpoint is damaged "
                "or not ignite_mlp's: use another checkpoint"
            )
    own = model.state_dict()
    problems = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    problems += [f"{k}: missing from checkpoint" for k in own if k not in saved]
    problems += [f"{k}: not in model" for k in saved if k not in own]
    if problems:
        raise UserError(
            f"{source}: the checkpoint's architecture differs from this run's ({'; '.join(problems)}); {fix}"
        )


def refuse_non_finite(tensors: Mapping[str, torch.Tensor], source: Path, fix: str) -> None:
    """Refuse weights or a transform holding NaN or infinity: every output would be NaN, not a result."""
    for key, value in tensors.items():
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise UserError(f"{source}: {key} holds {bad} non-finite value(s) (NaN or inf); the file is damaged: {fix}")


def _described(value: Any) -> str:
    """What a value that is not a plain tensor is, for a message.

    >>> _described("weights")
    'a str where a tensor goes'
    """
    if isinstance(value, torch.Tensor):
        kind = f"{str(value.layout).removeprefix('torch.')} {str(value.dtype).removeprefix('torch.')}"
        return f"a {kind} tensor, not a dense tensor of numbers"
    return f"a {type(value).__name__} where a tensor goes"


def _plain_tensor(value: Any) -> bool:
    """A dense tensor of numbers (not sparse, quantized or a subclass that could act otherwise)."""
    return (
        type(value) in (torch.Tensor, nn.Parameter)
        and value.layout == torch.strided
        and not value.is_quantized
        and (value.dtype.is_floating_point or value.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool))
    )
