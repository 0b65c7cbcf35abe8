"""What several test modules share: tiny generated data sets, the real pack when CI provides it,
and small helpers (the CLI's exit status, a pickle payload, a data set counting its test reads)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ignite_mlp.data import Dataset

CLASSES = ("ant", "bee", "cat")
PACK_VARIABLE = "IGNITE_MLP_PACK"


def pytest_configure(config: pytest.Config) -> None:
    """A relative IGNITE_MLP_PACK is made absolute once, from the directory pytest started in:
    tests that change directory, and the notebook's kernel (run from scripts/), would otherwise
    look for it in the wrong place."""
    if os.environ.get(PACK_VARIABLE):
        os.environ[PACK_VARIABLE] = str(Path(os.environ[PACK_VARIABLE]).resolve())


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own decode cache, so no test sees another's cached tensors."""
    monkeypatch.setenv("IGNITE_MLP_CACHE", str(tmp_path_factory.mktemp("cache")))


def run_cli(argv: list[str]) -> int:
    """The CLI's exit status for ``argv``, whether ``main()`` returns it or argparse exits with it."""
    from ignite_mlp.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)  # type: ignore[arg-type]


def quiet(_: str) -> None:
    """A ``write=`` for ``train()`` that prints nothing."""


def read_history(run_dir: Path) -> dict[str, Any]:
    """The run's ``history.json``, as on disk."""
    return json.loads((run_dir / "history.json").read_text())


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint or data batch could do.

    Pickled as a call of ``open`` itself, so a loader that allowed any global would run it."""

    def __init__(self, marker: Path | str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


_DATASET_FIELDS = ("train_images", "train_labels", "test_images", "test_labels", "classes", "source")


class CountingDataset(Dataset):
    """A :class:`Dataset` that counts every read of its test split's images and labels."""

    test_reads = 0

    def __getattribute__(self, name: str) -> Any:
        if name in ("test_images", "test_labels"):
            object.__setattr__(self, "test_reads", object.__getattribute__(self, "test_reads") + 1)
        return object.__getattribute__(self, name)

    @classmethod
    def of(cls, dataset: Dataset) -> CountingDataset:
        """A counting copy of ``dataset`` (the same tensors)."""
        return cls(*(getattr(dataset, f) for f in _DATASET_FIELDS))

    @property
    def _uncounted(self) -> Dataset:
        """The same tensors, uncounted: hashing the data and counting its images for the run's
        record identify the data, they use none of it."""
        return Dataset(*(object.__getattribute__(self, f) for f in _DATASET_FIELDS))

    fingerprint = property(lambda self: self._uncounted.fingerprint)
    counts = property(lambda self: self._uncounted.counts)


def decode_array(data: bytes, name: str) -> np.ndarray:
    """One image file as the package decodes it (``decode_arrays`` on a list of one)."""
    from ignite_mlp.data.images import decode_arrays

    return decode_arrays([(name, data)])[0]


def make_tree(root: Path, n_train: int = 12, n_test: int = 4, size: int = 8, seed: int = 0) -> Path:
    """A class-folder tree of PNG images (lossless, so pixels can be compared exactly).

    Each class has its own mean brightness, so a model can learn something quickly.
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 80 * k
                pixels = np.clip(rng.normal(base, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def make_gray_tree(root: Path, n_train: int = 12, n_test: int = 4, height: int = 12, width: int = 16) -> Path:
    """Like :func:`make_tree`, but 1-channel (mode L) PNGs of ``height x width``, not square."""
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, cls in enumerate(CLASSES):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(40 + 80 * k, 30, (height, width)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def make_tarball(tree: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return out


def make_cifar_pickles(root: Path, per_batch: int = 6, seed: int = 0) -> Path:
    """A tiny copy of the official ``cifar-10-batches-py`` layout (5 train batches + test batch)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    labels = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": labels}, f)
    return folder


class TrainedRuns:
    """Runs on a tiny tree (the ``tree`` fixture's images), each trained once when a test first
    asks for it, for a module's tests to share through a ``scope="module"`` fixture. A run is
    named by its settings: ``defaults`` and the overrides given to :meth:`run`. A test that
    changes a run works on a :meth:`copy`."""

    def __init__(self, root: Path, **defaults: Any) -> None:
        self.root = root
        self.tree = make_tree(root / "tree")
        self.defaults = {"progress": False, **defaults}
        self.results: dict[str, Any] = {}

    def config(self, run_dir: Path, **overrides: Any) -> Any:
        """The run's configuration, its data decoded into this object's own cache."""
        from ignite_mlp import TrainConfig

        settings = {"data": str(self.tree), "cache_dir": str(self.root / "cache"), **self.defaults, **overrides}
        return TrainConfig(**settings, run_dir=str(run_dir))

    def run(self, **overrides: Any) -> Any:
        """The ``RunResult`` of the run with these overrides, trained on the first call."""
        from ignite_mlp import train

        key = repr(sorted(overrides.items()))
        if key not in self.results:
            self.results[key] = train(self.config(self.root / f"run{len(self.results)}", **overrides), write=quiet)
        return self.results[key]

    def copy(self, to: Path, **overrides: Any) -> Path:
        """A copy of the run with these overrides, at ``to``, to change at will."""
        shutil.copytree(self.run(**overrides).run_dir, to)
        return to


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


@pytest.fixture
def tarball(tree: Path, tmp_path: Path) -> Path:
    return make_tarball(tree, tmp_path / "tiny.tar.gz")


@pytest.fixture
def pack() -> Path:
    """The real CIFAR-10 JPEG pack, found through IGNITE_MLP_PACK (set by .ci/run)."""
    path = os.environ.get(PACK_VARIABLE)
    if not path or not Path(path).is_file():
        pytest.skip("real-data test: set IGNITE_MLP_PACK to ../shared/data/cifar10-jpg.tar.gz")
    return Path(path)


@pytest.fixture
def serve(tmp_path: Path):
    """Serve ``tmp_path`` over HTTP on 127.0.0.1 and yield its base URL."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@contextlib.contextmanager
def busy_cpu(processes: int = 3) -> Iterator[None]:
    """Keep the machine busy inside the block: ``processes`` interpreters spinning on the cores,
    as other work on a shared machine would (a run must compute the same numbers then)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
