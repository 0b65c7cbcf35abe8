"""``load_dataset``: find the source, decode it once into the cache, and map it from there.

The cache holds one data file per source (see :mod:`ignite_mlp.data.cache`), named by the
source's path, sizes and modification times, so a changed source is decoded afresh. A lock
file beside each entry (:class:`ignite_mlp.locks.FileLock`) makes two runs started together on a
new source decode it once: the second waits, then maps what the first wrote. A cache folder that cannot be used is
said in one line, and the run goes on with the data decoded in its own memory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ignite_mlp.data import sources
from ignite_mlp.data.cache import SUFFIX, DataFileError, Decoded, open_data_file, remove_stale_partial, write_data_file
from ignite_mlp.data.dataset import Dataset, check_labels
from ignite_mlp.data.parallel import read_class_folders
from ignite_mlp.errors import UserError
from ignite_mlp.locks import FileLock, LockHeld

Note = Callable[[str], None]


def default_cache_dir() -> Path:
    return Path(os.environ.get("IGNITE_MLP_CACHE") or Path.home() / ".cache" / "ignite_mlp")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_dataset(
    source: str | Path,
    cache_dir: str | Path | None = None,
    download: bool = True,
    progress: str | bool = "off",
    note: Note | None = None,
) -> Dataset:
    """Load ``source`` (see :mod:`ignite_mlp.data.sources`), decoding only when the cache is
    missing or stale. ``progress`` is a mode of :func:`ignite_mlp.progress.progress_mode`
    (``bar``, ``lines``, ``off``); ``note`` receives the one-line notes (default: stderr).

    Raises :class:`UserError` with a fix for every problem a user can cause: missing path,
    not-a-tarball, empty class, corrupt image, mismatched classes, labels out of range.
    """
    note = note or _to_stderr
    path = Path(source).expanduser()
    kind, resolved = sources.identify(path, download)
    if kind == "datafile":
        try:
            dataset = open_data_file(resolved, str(path))
        except (DataFileError, OSError) as e:
            raise UserError(f"--data {path}: damaged data file ({e}); write it again") from None
    else:
        dataset = _through_cache(kind, resolved, cache_dir, progress, note)
    dataset.source = str(path)
    check_labels(dataset.train_labels, dataset.num_classes, "train")
    check_labels(dataset.test_labels, dataset.num_classes, "test")
    return dataset


def read_source(kind: str, path: Path, progress: str | bool = "off") -> Decoded:
    """Decode a source (not a data file) in full."""
    if kind in ("pickles", "pickles-tar"):
        return sources.read_cifar_pickles(kind, path)
    return read_class_folders(path, kind, progress)


def _through_cache(kind: str, path: Path, cache_dir: str | Path | None, progress: str | bool, note: Note) -> Dataset:
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    entry = cache / f"{path.name}-{sources.fingerprint(kind, path)}{SUFFIX}"
    dataset = _open_entry(entry)  # a read-only cache that holds the entry still serves it
    if dataset is not None:
        return dataset
    if usable_cache_dir(cache, note) is None:
        return read_source(kind, path, progress).to_dataset(str(path))
    lock = FileLock(entry.with_name(entry.name + ".lock"))
    try:
        lock.acquire(blocking=False)
    except LockHeld:
        note(f"waiting for another process that is decoding {path} into {entry}")
        lock.acquire()
    try:
        dataset = _open_entry(entry)  # the process we waited for has written it
        if dataset is not None:
            return dataset
        remove_stale_partial(entry)  # a writer killed mid-way; we hold the lock, so none is writing
        decoded = read_source(kind, path, progress)
        try:
            write_data_file(entry, decoded)
        except OSError as e:
            note(
                f"note: could not write the decode cache {entry} ({e.strerror or e}); this run keeps the "
                "decoded data in its own memory and the next one decodes again; free space or pass --cache-dir"
            )
            return decoded.to_dataset(str(path))
        return open_data_file(entry)
    finally:
        lock.release()


def _open_entry(entry: Path) -> Dataset | None:
    """The cached data set, or None when there is none or it is damaged (then it is rebuilt)."""
    try:
        return open_data_file(entry)
    except (OSError, DataFileError):
        return None


def usable_cache_dir(cache: Path, note: Note) -> Path | None:
    """``cache``, created if need be, when this process can search and write it; else None,
    after a one-line note saying why and what the run does instead."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # A name of its own (not just the pid): two loads in one process, on two threads, each
        # removing the other's probe would take the cache for unusable.
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=cache)
        os.close(fd)
        os.unlink(probe)
        return cache
    except OSError as e:
        note(
            f"note: cannot use the decode cache {cache} ({e.strerror or e}); decoding without it, so every "
            "start decodes again; pass --cache-dir DIR (or set IGNITE_MLP_CACHE) to a writable folder"
        )
        return None
