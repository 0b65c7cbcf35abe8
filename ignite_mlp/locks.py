"""The package's one lock: an exclusive ``flock`` on a file, with the holder's pid written in it.

Used for a run directory (one writer per run, see :class:`ignite_mlp.run.rundir.RunLock`), for an
entry of the decode cache (one decode per source, see :mod:`ignite_mlp.data.load`) and for a
sweep's trial (a live worker holds it). What each needs:

- the kernel drops the lock when its process ends, however it ends (``kill -9`` included), so a
  dead holder blocks nothing and :func:`is_free` tells a dead holder from a live one;
- a non-blocking try that names the holder (:class:`LockHeld` carries the pid it wrote), and a
  blocking acquire that waits for it;
- a released lock leaves no file behind: the holder removes the file while it still holds it, so
  the next holder locks a new file, and one that opened the old file meanwhile sees it is gone
  and takes the new one (:meth:`FileLock.acquire` checks after locking).

A symlink planted at the lock's name is refused (``O_NOFOLLOW``), never written through. Two
``FileLock`` objects on one path exclude each other within one process too (each has its own
open file description).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

# A holder releasing meanwhile removes the file just locked; lock the new one, this many times at most.
_TRIES = 100


class LockHeld(Exception):
    """A non-blocking acquire found the lock held; ``holder``: the pid its holder wrote ("unknown" if none)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by pid {holder}")
        self.path, self.holder = path, holder


class LockUnsteady(Exception):
    """The lock changed hands on every one of many tries (holders releasing as fast as we lock)."""


class PidNotWritten(OSError):
    """The lock was taken but its holder's pid could not be written (a full disk): it was let go."""


class FileLock:
    """An exclusive lock on the file ``path``: ``with FileLock(path): ...`` waits for it.

    :meth:`acquire` with ``blocking=False`` raises :class:`LockHeld` at once when another holds
    it. Acquiring a lock already held by this object does nothing; :meth:`release` removes the
    file, then lets go.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = True) -> None:
        """Take the lock (waiting for it when ``blocking``) and write this process's pid in it.

        Raises :class:`LockHeld` (not blocking, another holds it), :class:`LockUnsteady`,
        :class:`PidNotWritten`, or the ``OSError`` of opening the file (``ELOOP``: a symlink)."""
        if self._fd is not None:
            return
        for _ in range(_TRIES):
            fd = _locked(self.path, blocking)
            if self._is_current(fd, self.path):
                break
            os.close(fd)
        else:
            raise LockUnsteady(f"{self.path}: the lock keeps changing hands")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # let go, or the lock would stay held for this process's life
            self.path.unlink(missing_ok=True)
            os.close(fd)
            raise PidNotWritten(e.errno, e.strerror) from None
        self._fd = fd

    @staticmethod
    def _is_current(fd: int, path: Path) -> bool:
        """Whether the locked file is still the one at ``path`` (not removed by a releasing holder)."""
        try:
            there = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        """Remove the lock file while still holding it (the next holder locks a new file), then let go."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_free(path: str | Path) -> bool:
    """Whether nobody holds the lock on ``path`` (no file, or a file whose holder is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # (a lock taken here goes with it)


def _locked(path: Path, blocking: bool) -> int:
    """A descriptor of ``path`` (created if need be) holding its flock; :class:`LockHeld` naming the
    holder when ``blocking`` is False and another holds it."""
    # O_NOFOLLOW: a symlink planted at the lock's name is refused (ELOOP), never written through.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockHeld(path, holder) from None
    except BaseException:  # another error, or Ctrl-C while waiting
        os.close(fd)
        raise
    return fd
