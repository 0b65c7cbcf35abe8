"""The study's journal file (``SWEEP_DIR/journal.log``), made to outlive a crash.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends one JSON record a line
under a lock file and replays them all on open. A crash or a full disk mid-append leaves the last
line cut short; Optuna's reader skips a partial last line, but the next append is glued to it,
and from then on every reader stops at that invalid line (``JSONDecodeError``). A line that is
not JSON, or JSON that is not a record, stops it the same way.

:func:`mend_journal` finds the first line Optuna could not replay, keeps every record before it
(the finished trials among them), moves that line and everything after it to a backup file
beside the journal (``journal.log.damaged-N``, never deleted) and reports it in one line.
:class:`SweepJournal` is Optuna's backend with that mending done under Optuna's own lock before
every append, so a live worker never glues a record to a dead one's partial line, and with the
journal opened without following a symbolic link.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation, JournalStorageReplayResult
from optuna.trial import TrialState

from ignite_mlp.errors import UserError

BACKUP = ".damaged-"


def check_journal_path(path: Path) -> None:
    """Refuse a journal path that is a link, not a regular file, or cannot be written: one line each."""
    refuse_odd_journal(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise UserError(f"{path}: cannot be written ({e.strerror}); give a --sweep-dir this user can write") from None
    os.close(fd)


def refuse_odd_journal(path: Path) -> None:
    """Refuse a journal path that is a link or not a regular file (nothing made)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); check the sweep folder") from None
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise UserError(
            f"{path}: is a symbolic link; a sweep writes its journal only in its own folder: remove the link"
        )
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: is not a file (a folder?); move it away or give another --sweep-dir")


class SweepJournal(JournalFileBackend):
    """Optuna's journal backend that mends a damaged tail before appending (see :func:`mend_journal`)
    and never follows a link. ``notes`` collects the one-line reports of what it mended."""

    def __init__(self, path: Path) -> None:
        check_journal_path(path)
        super().__init__(str(path))
        self.path = path
        self.notes: list[str] = []

    def mend(self) -> str | None:
        """Mend the journal under Optuna's lock; the one-line report, or None when it was sound."""
        with get_lock_file(self._lock):
            return self._mend_locked()

    def _mend_locked(self) -> str | None:
        note = mend_journal(self.path)
        if note is not None:
            self.notes.append(note)
            self._log_number_offset = {0: 0}  # offsets past the cut no longer exist
        return note

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        with get_lock_file(self._lock):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
            try:
                size = os.fstat(fd).st_size
                # Writers hold the lock: a last line without its newline is a dead writer's.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    self._mend_locked()
                _write_all(fd, text)
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def first_damage(data: bytes) -> tuple[int, int, str, JournalStorageReplayResult]:
    """Replay ``data`` as Optuna does: the byte offset and line number (from 1) of the first line
    it cannot replay, what is wrong with it ("" and the end when nothing is), and the replay of
    the records before it."""
    replay = JournalStorageReplayResult("mend-")  # a worker id no journal holds: nothing raises as "ours"
    offset = 0
    valid = {op.value for op in JournalOperation}
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        if not line.endswith(b"\n"):
            return offset, number, "is cut short", replay
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return offset, number, "is not JSON", replay
        if not (isinstance(record, dict) and record.get("op_code") in valid and "worker_id" in record):
            return offset, number, "is not a journal record", replay
        try:
            replay.apply_logs([record])
        except Exception:  # a record whose fields Optuna cannot apply: KeyError, TypeError, ValueError...
            return offset, number, "is a record Optuna cannot apply", replay
        offset += len(line)
    return offset, 0, "", replay


def mend_journal(path: Path) -> str | None:
    """Cut ``path`` after its last record Optuna can replay, the rest moved to a backup file; the
    one-line report, or None when the journal was sound. The caller holds the journal's lock."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        data = _read_all(fd)
        good, number, what, replay = first_damage(data)
        if not what:
            return None
        tail = data[good:]
        backup = _write_backup(path, tail)
        os.ftruncate(fd, good)
        os.fsync(fd)
    finally:
        os.close(fd)
    finished = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        for t in replay._trials.values()  # noqa: SLF001
    )
    lines = tail.count(b"\n") + (not tail.endswith(b"\n"))
    return (
        f"{path.name}: line {number} {what} (a crash or a full disk mid-write?); kept the {number - 1} records "
        f"before it ({finished} finished trials); moved {len(tail)} bytes ({lines} lines) to {backup.name}"
    )


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_backup(path: Path, data: bytes) -> Path:
    """``data`` in a new ``path.damaged-N`` (the first N free), written before the journal is cut."""
    for n in range(1, 10_000):
        backup = path.with_name(f"{path.name}{BACKUP}{n}")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            continue
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return backup
    raise OSError(errno.EEXIST, "no free backup name", str(path))
