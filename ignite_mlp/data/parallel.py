"""Decode a class-folder tree or tarball with every core: a process pool over chunks of files.

This process walks the source (reading a tarball is one stream) and hands chunks of
:data:`CHUNK` files to worker processes, which decode them (see
:func:`ignite_mlp.data.images.decode_arrays`) and send back one uint8 array per chunk. At most
two chunks per worker are in flight, so memory holds the decoded images and a few chunks of
files, never the whole source's bytes. The result is a :class:`~ignite_mlp.data.cache.Decoded`
in (class, file name) order whatever order the files came in.

Workers are forked where the platform can (Linux; as PyTorch's DataLoader does): a fresh
interpreter would spend seconds importing torch before decoding its first image.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ignite_mlp.data.cache import Decoded, DecodedSplit
from ignite_mlp.data.images import check_classes, decode_arrays, iter_tarball, iter_tree, shape_mismatch, where
from ignite_mlp.progress import Progress

CHUNK = 256
IN_PROCESS_CHUNKS = 2


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_chunk(items: list[tuple[str, bytes]]) -> np.ndarray | list[np.ndarray]:
    """Decode ``(name, bytes)`` files into one ``(n, C, H, W)`` uint8 array, or into a list of
    arrays when their shapes differ (the caller names the file that breaks the data set's shape)."""
    arrays = decode_arrays(items)
    if any(array.shape != arrays[0].shape for array in arrays):
        return arrays
    return np.stack(arrays)


class _Pool(Executor):
    """A process pool started only for a third chunk: a small source (a test's, a tiny data
    set's) is decoded right here, sparing the fraction of a second that starting processes takes."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        self.submitted = 0

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:  # type: ignore[override]
        self.submitted += 1
        if self.workers > 1 and self.submitted > IN_PROCESS_CHUNKS:
            if self.pool is None:
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
                self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
            return self.pool.submit(fn, *args, **kwargs)
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def read_class_folders(path: Path, kind: str, progress: str = "off", workers: int | None = None) -> Decoded:
    """Decode a ``tree`` or ``tarball`` source on ``workers`` processes (default: every core)."""
    workers = workers or default_workers()
    entries = iter_tarball(path) if kind == "tarball" else iter_tree(path)
    class_dirs: dict[str, set[str]] = {"train": set(), "test": set()}
    decoded: dict[str, tuple[list[np.ndarray], list[tuple[str, str]]]] = {"train": ([], []), "test": ([], [])}
    first: list[tuple[tuple[int, ...], str]] = []  # the first image's shape and name
    pending: deque[tuple[str, list[tuple[str, str]], list[str], Future]] = deque()
    start = time.perf_counter()
    report = Progress("decoding images", progress, unit="img")

    def collect() -> None:
        split, names, wheres, future = pending.popleft()
        array = future.result()
        if not first:
            first.append((array[0].shape, wheres[0]))
        if isinstance(array, list) or array.shape[1:] != first[0][0]:
            bad = next(i for i, a in enumerate(array) if a.shape != first[0][0])
            raise shape_mismatch(wheres[bad], array[bad].shape, *first[0])
        decoded[split][0].append(array)
        decoded[split][1].extend(names)
        report.update(len(names))

    executor = _Pool(workers)
    try:
        for split, chunk in _chunks(entries, class_dirs):
            names = [(cls, name) for cls, name, _ in chunk]
            items = [(where(path, kind, split, cls, name), data) for cls, name, data in chunk]
            pending.append((split, names, [w for w, _ in items], executor.submit(decode_chunk, items)))
            while len(pending) > 2 * workers:
                collect()
        while pending:
            collect()
    except BaseException:
        report.close()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    processes = f"{workers} processes" if executor.pool is not None else "1 process"
    report.close(f"decoded {report.done} images from {path} in {seconds:.1f} s ({processes})")
    counts = {split: Counter(cls for cls, _ in decoded[split][1]) for split in decoded}
    classes = check_classes(path, class_dirs, counts)
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split in ("train", "test"):
        chunks, names = decoded[split]
        # Sort by (class, file name): tarball member order is arbitrary, the result must not be.
        rows = np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)
        labels = np.array([index[names[r][0]] for r in rows], dtype=np.int64)
        splits.append(DecodedSplit(chunks, labels, rows))
    return Decoded(classes, *splits)


def _chunks(
    entries: Iterator[tuple[str, str, str, bytes | None]], class_dirs: dict[str, set[str]]
) -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """Group the files of each split into chunks of :data:`CHUNK`; note every class folder seen."""
    chunk: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    for split, cls, name, data in entries:
        class_dirs[split].add(cls)
        if data is None:
            continue
        chunk[split].append((cls, name, data))
        if len(chunk[split]) == CHUNK:
            yield split, chunk[split]
            chunk[split] = []
    for split in ("train", "test"):
        if chunk[split]:
            yield split, chunk[split]
