"""Finding the source behind ``--data``, fetching CIFAR-10, and reading its pickles safely.

Kinds of source (what :func:`identify` returns):

* ``pickles``: a ``cifar-10-batches-py`` folder;
* ``pickles-tar``: the official ``cifar-10-python.tar.gz``, read in place (nothing is unpacked);
* ``tree``: a class-folder tree ``train/<class>/<image>`` + ``test/<class>/<image>``;
* ``tarball``: a ``.tar.gz`` of such a tree, read in place;
* ``datafile``: an ignite_mlp data file (see :mod:`ignite_mlp.data.cache`), used as it is.

The pickles go through a restricted unpickler that builds only numpy arrays, lists, dicts,
bytes, strings and numbers: a crafted ``data_batch_1`` cannot run code. What it holds is then
checked: pixels must be integers in 0..255 and labels class indices, else one line naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import re
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ignite_mlp.data.cache import Decoded, DecodedSplit, is_data_file
from ignite_mlp.errors import UserError

# The official archive; module constants so tests can point them at a tiny fake copy.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR10_TEST = ["test_batch"]
_CIFAR10_FILES = (*_CIFAR10_TRAIN, *_CIFAR10_TEST, "batches.meta")
# An official batch is 31 MB; a member declaring far more is not one (and is not read).
MAX_PICKLE_BYTES = 256 * 2**20
# Bump when the cache layout or the decoding changes, so old caches are ignored, not misread.
CACHE_VERSION = 3


# ---------------------------------------------------------------------------- finding the source


def identify(path: Path, download: bool) -> tuple[str, Path]:
    """Return ``(kind, path)`` (kinds in the module docstring); download CIFAR-10 if allowed."""
    refuse_url(path)
    if path.is_file():
        try:
            if is_data_file(path):
                return "datafile", path
            if not tarfile.is_tarfile(path) or not _is_gzip(path):
                raise UserError(f"--data {path}: not a gzip tarball; give a .tar.gz of train/ and test/ or a folder")
        except OSError as e:
            raise UserError(f"--data {path}: cannot read it ({e.strerror or e}); check its permissions") from None
        return ("pickles-tar" if _tar_has_cifar_pickles(path) else "tarball"), path
    if path.name == CIFAR10_FOLDER and path.is_dir():
        return "pickles", path
    if (path / CIFAR10_FOLDER).is_dir():
        return "pickles", path / CIFAR10_FOLDER
    if (path / CIFAR10_ARCHIVE).is_file():
        return "pickles-tar", path / CIFAR10_ARCHIVE
    if (path / "train").is_dir() or (path / "test").is_dir():
        return "tree", path
    if path.suffix in (".gz", ".tgz") or path.name.endswith(".tar.gz"):
        raise UserError(f"--data {path}: no such file; check the path to the .tar.gz")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(
            f"--data {path}: found neither {CIFAR10_FOLDER}/ nor train/ and test/ class folders; "
            "point --data at a CIFAR-10 folder, a class-folder tree or its .tar.gz"
        )
    if not download:
        raise UserError(
            f"--data {path}: missing or empty and downloading is off; point --data at a local copy "
            f"({CIFAR10_FOLDER}/, a train/ test/ class-folder tree, or its .tar.gz) or drop --no-download"
        )
    download_cifar10(path)
    return "pickles-tar", path / CIFAR10_ARCHIVE


def refuse_url(path: Path) -> None:
    """Refuse a URL given as ``--data`` (as a path, ``http://host/x`` would become folders
    ``http:/host/x``), unless such a local path really exists.

    >>> try:
    ...     refuse_url(Path("https://example.com/data.tar.gz"))
    ... except UserError as e:
    ...     print(str(e).split(";")[0])
    --data https://example.com/data.tar.gz: URLs are not supported
    """
    text = str(path)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", text) and not path.exists():
        url = re.sub(r"^([A-Za-z0-9+.-]+):/(?!/)", r"\1://", text)  # a Path folds "//" into "/"
        raise UserError(
            f"--data {url}: URLs are not supported; download the file and give its local path "
            "(without --data, CIFAR-10 is downloaded for you)"
        )


def download_cifar10(root: Path) -> None:
    """Fetch the official archive into ``root`` (torchvision checks its MD5), kept packed.

    It arrives under a ``.partial`` name and takes its own name only once its checksum
    matched, so an interrupted or corrupt download is never taken for the archive. The folders
    made for it are removed again if it fails (offline, say): a failed start leaves no empty
    ``--data`` folder behind.
    """
    from torchvision.datasets.utils import download_url

    partial = root / f"{CIFAR10_ARCHIVE}.partial"
    made = _missing_folders(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_url(CIFAR10_URL, str(root), filename=partial.name, md5=CIFAR10_MD5)
        os.replace(partial, root / CIFAR10_ARCHIVE)
    except (OSError, RuntimeError) as e:
        # URLError is an OSError; torchvision raises RuntimeError on a bad checksum.
        partial.unlink(missing_ok=True)
        _remove_empty(made)
        raise UserError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); offline? "
            "point --data at a local copy: a folder with cifar-10-batches-py/, a train/ test/ "
            "class-folder tree, or its .tar.gz (e.g. --data ../shared/data/cifar10-jpg.tar.gz)"
        ) from None


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are empty; one that holds anything stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or already gone): its parents are not empty either


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _tar_has_cifar_pickles(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"--data {path}: damaged or truncated tarball ({e}); download or copy it again") from None
    return first is not None and first.name.strip("./").split("/")[0] == CIFAR10_FOLDER


def fingerprint(kind: str, path: Path) -> str:
    """Hash of what identifies the source's content: path, sizes, modification times."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{path.resolve()}".encode())
    if path.is_file():
        st = path.stat()
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                st = os.stat(os.path.join(root, name))
                h.update(f"{os.path.relpath(os.path.join(root, name), path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- CIFAR-10 pickles


class _ArraysOnly(pickle.Unpickler):
    """Builds numpy arrays and plain containers, nothing else: any other global is refused,
    so unpickling cannot call a function an attacker chose."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 2 pickles spell bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 moved it
        return getattr(importlib.import_module(module), name)


def _unpickle(data: bytes, where: str, fix: str) -> Any:
    try:
        return _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{where}: not a CIFAR-10 batch, refused ({e}); {fix}") from None


def read_cifar_pickles(kind: str, path: Path) -> Decoded:
    """The official batches from a ``cifar-10-batches-py`` folder or, read in place, its archive."""
    if kind == "pickles-tar":
        files, fix = _archive_members(path), f"delete {path} and download it again"
    else:
        files, fix = _folder_files(path), f"delete {path} and download again"

    def where(name: str) -> str:
        return f"{path}:{CIFAR10_FOLDER}/{name}" if kind == "pickles-tar" else str(path / name)

    meta = _unpickle(files["batches.meta"](), where("batches.meta"), fix)
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{where('batches.meta')}: holds no class names ({e}); {fix}") from None

    def read(names: list[str]) -> DecodedSplit:
        images, labels = [], []
        for name in names:
            entry = _unpickle(files[name](), where(name), fix)
            try:
                pixels = _pixels(entry[b"data"], where(name), fix).reshape(-1, 3, 32, 32)
                batch_labels = _labels(entry[b"labels"], len(classes), where(name), fix)
            except UserError:
                raise
            except (KeyError, ValueError, TypeError) as e:
                raise UserError(f"{where(name)}: corrupt CIFAR-10 batch ({e}); {fix}") from None
            if len(pixels) != len(batch_labels):
                raise UserError(f"{where(name)}: {len(pixels)} images but {len(batch_labels)} labels; {fix}")
            images.append(pixels)
            labels.append(batch_labels)
        return DecodedSplit([np.concatenate(images)], np.concatenate(labels))

    return Decoded(classes, read(_CIFAR10_TRAIN), read(_CIFAR10_TEST))


def _pixels(data: Any, where: str, fix: str) -> np.ndarray:
    """A batch's pixels as uint8, refused (naming what was found) unless they are integers in 0..255.

    >>> _pixels(np.array([-1.5, 0.5]), "data_batch_1", "replace it")
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: data_batch_1: pixels are float64 (-1.5 to 0.5), not 8-bit integers 0..255; replace it
    """
    array = np.asarray(data)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu" and array.dtype != np.bool_:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if 0 <= low and high <= 255:
            return array.astype(np.uint8)
        found = f"{array.dtype} from {low} to {high}"
    elif array.dtype.kind == "f" and array.size:
        finite = array[np.isfinite(array)]
        span = f"{finite.min():g} to {finite.max():g}" if finite.size else "no finite value"
        found = f"{array.dtype} ({span}{', NaN or infinite among them' if finite.size < array.size else ''})"
    else:
        found = str(array.dtype)
    raise UserError(f"{where}: pixels are {found}, not 8-bit integers 0..255; {fix}")


def _labels(data: Any, num_classes: int, where: str, fix: str) -> np.ndarray:
    """A batch's labels as int64, refused (naming the first bad one) unless each is a class index.

    >>> _labels([3, 2.0], 10, "data_batch_1", "replace it")
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: data_batch_1: label 2.0 (position 1) is not a class index 0..9; replace it
    """
    values = data.tolist() if isinstance(data, np.ndarray) else list(data)
    for i, label in enumerate(values):
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_classes:
            raise UserError(
                f"{where}: label {_shown(label)} (position {i}) is not a class index 0..{num_classes - 1}; {fix}"
            )
    return np.asarray(values, dtype=np.int64)


def _shown(value: Any) -> str:
    """``repr(value)``, kept short: a crafted file's value must not flood the terminal."""
    if isinstance(value, int) and value.bit_length() > 1000:  # repr of a huge int is slow, or refused
        return f"(an integer of {value.bit_length()} bits)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _folder_files(folder: Path) -> Mapping[str, Callable[[], bytes]]:
    def reader(name: str) -> Callable[[], bytes]:
        def read() -> bytes:
            file = folder / name
            if not file.is_file():
                raise UserError(f"{file}: missing from the CIFAR-10 folder; delete {folder} and download again")
            if file.stat().st_size > MAX_PICKLE_BYTES:
                raise UserError(f"{file}: {file.stat().st_size} bytes, far more than a CIFAR-10 batch; replace it")
            return file.read_bytes()

        return read

    return {name: reader(name) for name in _CIFAR10_FILES}


def _archive_members(archive: Path) -> Mapping[str, Callable[[], bytes]]:
    """The batches of the official archive, read into memory in one pass (about 180 MB)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if not (member.isfile() and len(parts) == 2 and parts[0] == CIFAR10_FOLDER):
                    continue
                if parts[1] in _CIFAR10_FILES:
                    if member.size > MAX_PICKLE_BYTES:
                        raise UserError(
                            f"{archive}:{member.name}: declares {member.size} bytes, far more than a "
                            "CIFAR-10 batch; this is not the official archive"
                        )
                    found[parts[1]] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: damaged or truncated archive ({e}); delete it and download again") from None
    missing = [n for n in _CIFAR10_FILES if n not in found]
    if missing:
        raise UserError(f"{archive}: {CIFAR10_FOLDER}/{missing[0]} is missing; delete it and download again")
    return {name: (lambda data=data: data) for name, data in found.items()}
