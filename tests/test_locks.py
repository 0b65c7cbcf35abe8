"""ignite_mlp.locks: the one lock, checked for what each of its users needs.

A run refuses a second writer at once, naming the first one's pid; the decode cache waits for
the process decoding; a sweep asks whether a trial's worker is still alive. All three need a
holder killed with SIGKILL to block nothing, and a released lock to leave no file behind.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ignite_mlp.locks import FileLock, LockHeld, is_free

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _holder(path: Path) -> subprocess.Popen:
    """Another process holding the lock on ``path`` until it is killed or told to release."""
    code = (
        "import sys\n"
        "from ignite_mlp.locks import FileLock\n"
        "lock = FileLock(sys.argv[1])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"  # released when the test writes a line
        "lock.release()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _let_go(holder: subprocess.Popen) -> None:
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.wait(timeout=30) == 0


def test_a_second_holder_is_refused_naming_the_first_ones_pid(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = _holder(path)
    try:
        assert path.read_text().strip() == str(holder.pid)  # the holder's pid is in the file
        assert not is_free(path)
        with pytest.raises(LockHeld) as refused:
            FileLock(path).acquire(blocking=False)
        assert refused.value.holder == str(holder.pid)
        assert f"pid {holder.pid}" in str(refused.value)
    finally:
        _let_go(holder)
    assert not path.exists()  # a holder that releases removes its file
    assert is_free(path)


def test_a_blocking_acquire_waits_for_the_holder_then_takes_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = _holder(path)
    waiting, got = FileLock(path), []
    waiter = threading.Thread(target=lambda: (waiting.acquire(), got.append(time.monotonic())))
    waiter.start()
    time.sleep(0.3)
    assert got == []  # still waiting
    released = time.monotonic()
    _let_go(holder)
    waiter.join(timeout=30)
    assert got and got[0] >= released
    # The waiter locked the holder's file, saw it removed, and took a new one: that one is held.
    assert path.read_text().strip() == str(os.getpid())
    assert not is_free(path)
    waiting.release()


def test_a_holder_killed_with_sigkill_blocks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = _holder(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert path.read_text().strip() == str(holder.pid)  # its file stays ...
    assert is_free(path)  # ... and holds nothing: the kernel let go when the process died
    with FileLock(path) as lock:
        assert lock.held and path.read_text().strip() == str(os.getpid())
    assert not path.exists()


def test_the_lock_is_exclusive_within_one_process_and_free_again_once_released(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first = FileLock(path)
    first.acquire(blocking=False)
    first.acquire(blocking=False)  # held already: nothing to do
    with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
        FileLock(path).acquire(blocking=False)
    first.release()
    first.release()  # released already: nothing to do
    assert not first.held and not path.exists()
    FileLock(path).acquire(blocking=False)


def test_a_lock_released_under_a_waiting_opener_is_taken_on_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first = FileLock(path)
    first.acquire()
    stale = os.open(path, os.O_RDWR)  # opened while held, as a second holder would
    first.release()
    assert not FileLock._is_current(stale, path)  # gone
    path.write_text("")
    assert not FileLock._is_current(stale, path)  # replaced
    os.close(stale)
    fresh = os.open(path, os.O_RDWR)
    assert FileLock._is_current(fresh, path)
    os.close(fresh)


def test_a_symlink_at_the_locks_name_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (tmp_path / "x.lock").symlink_to(target)
    with pytest.raises(OSError) as refused:
        FileLock(tmp_path / "x.lock").acquire(blocking=False)
    assert refused.value.errno == errno.ELOOP
    assert target.read_text() == "precious"


def test_is_free_on_a_missing_file(tmp_path: Path) -> None:
    assert is_free(tmp_path / "nobody.lock")
    assert not (tmp_path / "nobody.lock").exists()  # asking creates nothing
