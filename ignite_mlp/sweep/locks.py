"""The sweep's lock files (``SWEEP_DIR/.locks/``), on the package's one lock
(:class:`ignite_mlp.locks.FileLock`: an exclusive ``flock`` the kernel drops when its process
dies, even by ``kill -9``). :class:`TrialLock` adds what the sweep needs around it: the folder
made and refused when it is a link, and a link at a lock's name said in one line.

* ``trial-NNNN.lock``: held by the worker running trial NNNN until Optuna has recorded its end.
  A running trial whose lock nobody holds lost its worker, whatever host it ran on.
* ``create.lock``: held by a worker from the moment it asks Optuna for a trial until it holds
  that trial's lock, and by a worker looking for dead trials; so a trial that was just created,
  and whose lock is not taken yet, is never taken for dead.

Lock files are opened without following a symbolic link, in a folder that is not one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ignite_mlp.errors import UserError
from ignite_mlp.locks import FileLock, LockHeld, is_free

LOCKS = ".locks"
CREATE = "create.lock"


def lock_path(sweep_dir: Path, number: int) -> Path:
    """The file a live worker holds locked while it runs trial ``number``.

    >>> lock_path(Path("runs/s"), 7).as_posix()
    'runs/s/.locks/trial-0007.lock'
    """
    return sweep_dir / LOCKS / f"trial-{number:04d}.lock"


def create_lock_path(sweep_dir: Path) -> Path:
    return sweep_dir / LOCKS / CREATE


def own_folder(path: Path) -> None:
    """Make the folder ``path`` (its parent exists); refuse it when it is a link or not a folder."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise UserError(f"{path}: cannot be made ({e.strerror}); give a --sweep-dir this user can write") from None
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
        raise UserError(f"{path}: is {what}; a sweep keeps its files in its own folder: remove it")


def _link_refused(path: Path) -> UserError:
    return UserError(f"{path}: is a symbolic link; a sweep's lock files are its own: remove the link")


class TrialLock:
    """One of the sweep's locks, held until :meth:`release` or the process's end."""

    def __init__(self) -> None:
        self._lock: FileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.held

    @property
    def path(self) -> Path | None:
        return self._lock.path if self._lock is not None else None

    def acquire(self, path: Path, blocking: bool = True) -> bool:
        """Lock ``path`` (its folder made if missing); without ``blocking``, False when another process holds it."""
        self.release()
        own_folder(path.parent)
        lock = FileLock(path)
        try:
            lock.acquire(blocking)
        except LockHeld:
            return False
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link at the lock's name
                raise _link_refused(path) from None
            raise
        self._lock = lock
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> TrialLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds ``path``'s lock (a missing file is free): its worker is gone."""
    try:
        return is_free(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _link_refused(path) from None
        raise
