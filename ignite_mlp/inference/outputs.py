"""What a command writes with ``--out`` (``evaluate``, ``samples``, ``lr-find``, ``export``): a file
it can write, checked before any work; never one of a run's own files; and, when it lands in a
run directory, written under that run's lock."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ignite_mlp.errors import UserError
from ignite_mlp.run.rundir import CHECKPOINTS, RunDir


def check_output_file(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a file this command can write: not a folder, in a folder that exists and is
    writable. Checked before any work, so a bad ``--out`` costs nothing.

    >>> check_output_file("/")
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: --out /: is a folder; give a file name such as /plot.png
    """
    path = Path(out)
    if path.is_dir():
        raise UserError(f"{flag} {out}: is a folder; give a file name such as {path / 'plot.png'}")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"{flag} {out}: folder {folder} does not exist; create it or choose another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: folder {folder} is not writable; choose another {flag}")
    return path


def cannot_write(out: str | Path, error: OSError, flag: str = "--out") -> UserError:
    """The one line for a write that failed all the same (a full disk, a read-only file system)."""
    return UserError(f"{flag} {out}: cannot write there ({error.strerror or error}); choose another {flag}")


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
def refuse_run_file_and_lock(out: str | Path, flag: str = "--out", allowed: tuple[str, ...] = ()) -> Iterator[Path]:
    """Refuse ``out`` when it would replace one of a run's own files (see :func:`refuse_run_file`),
    then, when it lands in a run directory, hold that run's lock inside the block."""
    refuse_run_file(out, flag, allowed)
    run = run_of(Path(out))
    if run is None:
        yield Path(out)
        return
    with run.lock():
        yield Path(out)
