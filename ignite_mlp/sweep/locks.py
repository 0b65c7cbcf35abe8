"""The sweep's lock files (``SWEEP_DIR/.locks/``), one implementation: :class:`TrialLock`, an
exclusive ``flock`` the kernel drops when its process dies, even by ``kill -9``.

* ``trial-NNNN.lock``: held by the worker running trial NNNN until Optuna has recorded its end.
  A running trial whose lock nobody holds lost its worker, whatever host it ran on.
* ``create.lock``: held by a worker from the moment it asks Optuna for a trial until it holds
  that trial's lock, and by a worker looking for dead trials; so a trial that was just created,
  and whose lock is not taken yet, is never taken for dead.

Lock files are opened without following a symbolic link, in a folder that is not one.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from ignite_mlp.errors import UserError

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


def _open(path: Path, create: bool) -> int:
    flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno == 40:  # ELOOP: the lock file is a symbolic link
            raise UserError(f"{path}: is a symbolic link; a sweep's lock files are its own: remove the link") from None
        raise


class TrialLock:
    """An exclusive lock on one lock file, held until :meth:`release` or the process's end."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.path: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, path: Path, blocking: bool = True) -> bool:
        """Lock ``path`` (made if missing); without ``blocking``, False when another process holds it."""
        self.release()
        own_folder(path.parent)
        fd = _open(path, create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.path = fd, path
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd, self.path = None, None

    def __enter__(self) -> TrialLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds ``path``'s lock (a missing file is free): its worker is gone."""
    try:
        fd = _open(path, create=False)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
