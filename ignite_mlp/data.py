"""Data: find or fetch the data set once, decode it once into uint8 tensors, serve batches from memory.

Three kinds of source are understood, all ending up as the same :class:`Dataset`:

* CIFAR-10 as users get it: the ``cifar-10-batches-py`` pickles (or the official
  ``cifar-10-python.tar.gz``), downloaded by torchvision into the data folder on first use;
* any class-folder tree ``train/<class>/<image>`` + ``test/<class>/<image>`` (ImageFolder layout);
* a ``.tar.gz`` of such a tree (this is how the shared CIFAR-10 JPEG pack is read, unextracted).

Decoding 60,000 JPEGs takes seconds, so the decoded tensors are cached on disk, keyed by the
source's path, size and modification times: a second run loads them in a fraction of a second
and a changed source is decoded afresh.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ignite_mlp.augment import Mix
from ignite_mlp.errors import UserError

# The official archive; module constants so tests can point them at a tiny fake copy.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR10_TEST = ["test_batch"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# Bump when the cache file's layout changes, so old caches are ignored rather than misread.
_CACHE_VERSION = 1


@dataclass
class Dataset:
    """Decoded train and test splits as uint8 ``(N, C, H, W)`` images and int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def in_features(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------- entry point


def default_cache_dir() -> Path:
    return Path(os.environ.get("IGNITE_MLP_CACHE") or Path.home() / ".cache" / "ignite_mlp")


def load_dataset(
    source: str | Path,
    cache_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = False,
) -> Dataset:
    """Load ``source`` (see module docstring), decoding only when the cache is missing or stale.

    Raises :class:`UserError` with a fix for every problem a user can cause: missing path,
    not-a-tarball, empty class, corrupt image, mismatched classes, labels out of range.
    """
    path = Path(source).expanduser()
    kind, resolved = _identify(path, download)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache / f"{resolved.name}-{_fingerprint(kind, resolved)}.pt"
    dataset = _read_cache(cache_file)
    if dataset is None:
        if kind == "pickles":
            dataset = _read_cifar_pickles(resolved)
        else:
            dataset = _read_class_folders(resolved, kind, progress)
        _write_cache(cache_file, dataset)
    dataset.source = str(path)
    check_labels(dataset.train_labels, dataset.num_classes, "train")
    check_labels(dataset.test_labels, dataset.num_classes, "test")
    return dataset


def check_labels(labels: torch.Tensor, num_classes: int, split: str) -> None:
    """Refuse labels outside ``[0, num_classes)`` here, not as a device-side assert mid-training.

    >>> check_labels(torch.tensor([0, 3]), 3, "train")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ignite_mlp.errors.UserError: train labels must lie in [0, 2] for 3 classes, found 3; ...
    """
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise UserError(
            f"{split} labels must lie in [0, {num_classes - 1}] for {num_classes} classes, found {bad}; "
            "the number of classes must match the data"
        )


def summarize(dataset: Dataset, batch_size: int) -> str:
    """A printout like the tutorial's: classes, counts, image shape, batches per epoch."""
    c, h, w = dataset.image_shape
    counts = torch.bincount(dataset.train_labels, minlength=dataset.num_classes).tolist()
    test_counts = torch.bincount(dataset.test_labels, minlength=dataset.num_classes).tolist()
    per_class = ", ".join(f"{n} {tr}/{te}" for n, tr, te in zip(dataset.classes, counts, test_counts, strict=True))
    batches = -(-len(dataset.train_labels) // batch_size)
    return (
        f"data: {dataset.source}\n"
        f"  {dataset.num_classes} classes (train/test images): {per_class}\n"
        f"  train {len(dataset.train_labels)} images, test {len(dataset.test_labels)} images, "
        f"image shape {c}x{h}x{w} ({dataset.in_features} inputs)\n"
        f"  {batches} batches of {batch_size} per epoch"
    )


# ---------------------------------------------------------------------------- finding the source


def _identify(path: Path, download: bool) -> tuple[str, Path]:
    """Return (kind, path) with kind in {"pickles", "tree", "tarball"}; download if allowed."""
    if path.is_file():
        if not tarfile.is_tarfile(path) or not _is_gzip(path):
            raise UserError(f"--data {path}: not a gzip tarball; give a .tar.gz of train/ and test/ or a folder")
        if _tar_has_cifar_pickles(path):
            folder = path.parent / CIFAR10_FOLDER
            if not folder.is_dir():
                _extract(path, path.parent)
            return "pickles", folder
        return "tarball", path
    if path.name == CIFAR10_FOLDER and path.is_dir():
        return "pickles", path
    if (path / CIFAR10_FOLDER).is_dir():
        return "pickles", path / CIFAR10_FOLDER
    if (path / CIFAR10_ARCHIVE).is_file():
        _extract(path / CIFAR10_ARCHIVE, path)
        return "pickles", path / CIFAR10_FOLDER
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
    return "pickles", path / CIFAR10_FOLDER


def download_cifar10(root: Path) -> None:
    """Fetch and unpack the official archive into ``root`` (torchvision checks its MD5)."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(CIFAR10_URL, str(root), filename=CIFAR10_ARCHIVE, md5=CIFAR10_MD5)
    except (OSError, RuntimeError) as e:
        # URLError is an OSError; torchvision raises RuntimeError on a bad checksum.
        raise UserError(
            f"could not download CIFAR-10 into {root} ({type(e).__name__}: {e}); offline? "
            "point --data at a local copy: a folder with cifar-10-batches-py/, a train/ test/ "
            "class-folder tree, or its .tar.gz (e.g. --data ../shared/data/cifar10-jpg.tar.gz)"
        ) from None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _tar_has_cifar_pickles(path: Path) -> bool:
    with tarfile.open(path, "r:gz") as tar:
        first = tar.next()
        return first is not None and first.name.strip("./").split("/")[0] == CIFAR10_FOLDER


def _extract(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{archive}: cannot unpack ({e}); delete it and download again") from None


def _fingerprint(kind: str, path: Path) -> str:
    """Hash of what identifies the source's content: path, sizes, modification times."""
    h = hashlib.sha256(f"{_CACHE_VERSION}|{kind}|{path.resolve()}".encode())
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


# ---------------------------------------------------------------------------- the cache


def _read_cache(cache_file: Path) -> Dataset | None:
    if not cache_file.is_file():
        return None
    try:
        blob = torch.load(cache_file, weights_only=True, mmap=True)
        return Dataset(**{k: blob[k] for k in Dataset.__dataclass_fields__ if k != "source"}, source="")
    except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
        return None


def _write_cache(cache_file: Path, dataset: Dataset) -> None:
    blob = {k: getattr(dataset, k) for k in Dataset.__dataclass_fields__ if k != "source"}
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, cache_file)  # atomic: a reader never sees half a cache
    except (OSError, RuntimeError):  # torch.save reports a full disk as a RuntimeError
        Path(tmp).unlink(missing_ok=True)  # an unwritable cache only costs the next run a decode


# ---------------------------------------------------------------------------- CIFAR-10 pickles


def _read_cifar_pickles(folder: Path) -> Dataset:
    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            file = folder / name
            if not file.is_file():
                raise UserError(f"{file}: missing from the CIFAR-10 folder; delete {folder} and download again")
            try:
                with open(file, "rb") as f:
                    entry = pickle.load(f, encoding="bytes")
                images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry[b"labels"])
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
                raise UserError(f"{file}: corrupt CIFAR-10 batch ({e}); delete {folder} and download again") from None
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)

    train_x, train_y = read(_CIFAR10_TRAIN)
    test_x, test_y = read(_CIFAR10_TEST)
    with open(folder / "batches.meta", "rb") as f:
        classes = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    return Dataset(train_x, train_y, test_x, test_y, classes, str(folder))


# ---------------------------------------------------------------------------- class-folder trees


def _iter_tree(root: Path) -> Iterator[tuple[str, str, str, bytes | None]]:
    """Yield (split, class, file name, bytes) for a folder tree; bytes None marks a class folder."""
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            yield split, class_dir.name, "", None
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                    yield split, class_dir.name, file.name, file.read_bytes()


def _iter_tarball(path: Path) -> Iterator[tuple[str, str, str, bytes | None]]:
    """Same as :func:`_iter_tree` for a .tar.gz, streamed without unpacking to disk."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if member.isdir() and len(parts) >= 2 and parts[-2] in ("train", "test"):
                    yield parts[-2], parts[-1], "", None
                elif member.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test"):
                    if parts[-1].lower().endswith(IMAGE_EXTENSIONS) and not parts[-1].startswith("._"):
                        yield parts[-3], parts[-2], parts[-1], tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"--data {path}: damaged or truncated tarball ({e}); download or copy it again") from None


def decode(data: bytes, name: str) -> torch.Tensor:
    """Decode one image file to uint8 ``(C, H, W)``; a corrupt file is a UserError naming it.

    Grayscale stays 1 channel, RGBA 4; palette and other modes become RGB.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except UnidentifiedImageError:
        raise UserError(f"{name}: corrupt image (not a format PIL can read); delete or replace this file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{name}: corrupt or truncated image ({e}); delete or replace this file") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _read_class_folders(path: Path, kind: str, progress: bool) -> Dataset:
    entries = _iter_tarball(path) if kind == "tarball" else _iter_tree(path)
    images: dict[str, list[tuple[str, str, torch.Tensor]]] = {"train": [], "test": []}
    class_dirs: dict[str, set[str]] = {"train": set(), "test": set()}
    shape: tuple[int, ...] | None = None
    first_name = ""
    for split, cls, name, data in tqdm(entries, desc="decoding images", unit="img", disable=not progress):
        class_dirs[split].add(cls)
        if data is None:
            continue
        where = f"{path}:{split}/{cls}/{name}" if kind == "tarball" else str(path / split / cls / name)
        image = decode(data, where)
        if shape is None:
            shape, first_name = tuple(image.shape), where
        elif tuple(image.shape) != shape:
            raise UserError(
                f"{where}: image shape {tuple(image.shape)} differs from {shape} of {first_name}; "
                "all images must share one size and channel count (resize or convert them)"
            )
        images[split].append((cls, name, image))
    return _assemble(path, images, class_dirs)


def _assemble(
    path: Path,
    images: dict[str, list[tuple[str, str, torch.Tensor]]],
    class_dirs: dict[str, set[str]],
) -> Dataset:
    for split in ("train", "test"):
        if not class_dirs[split]:
            raise UserError(
                f"--data {path}: no {split}/<class>/ folders found; "
                "the layout is train/<class>/*.jpg and test/<class>/*.jpg"
            )
    if class_dirs["train"] != class_dirs["test"]:
        only_train = sorted(class_dirs["train"] - class_dirs["test"])
        only_test = sorted(class_dirs["test"] - class_dirs["train"])
        raise UserError(
            f"--data {path}: train/ and test/ hold different classes (only in train: {only_train}, "
            f"only in test: {only_test}); both must have the same class folders"
        )
    classes = sorted(class_dirs["train"])
    index = {c: i for i, c in enumerate(classes)}
    tensors = []
    for split in ("train", "test"):
        counts = Counter(cls for cls, _, _ in images[split])
        empty = [c for c in classes if counts[c] == 0]
        if empty:
            raise UserError(
                f"--data {path}: class folder {split}/{empty[0]} holds no images; add images or remove the folder"
            )
        # Sort by (class, file name): tarball member order is arbitrary, the result must not be.
        ordered = sorted(images[split], key=lambda e: (e[0], e[1]))
        tensors.append(torch.stack([img for _, _, img in ordered]))
        tensors.append(torch.tensor([index[cls] for cls, _, _ in ordered], dtype=torch.int64))
    return Dataset(*tensors, classes=classes, source=str(path))


# ---------------------------------------------------------------------------- batches from memory


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, computed in chunks.

    >>> x = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    >>> channel_stats(x)
    ([0.5], [0.5])
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(images), chunk):
        block = images[i : i + chunk].to(torch.float64).div_(255).transpose(0, 1).flatten(1)
        total += block.sum(1)
        squares += (block * block).sum(1)
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def normalization(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift so that ``uint8 * scale + shift == (x / 255 - mean) / std``, per channel.

    >>> scale, shift = normalization([0.5], [0.5], 3)
    >>> (torch.tensor([0.0, 255.0]) * scale[0, 0, 0, 0] + shift[0, 0, 0, 0]).tolist()
    [-1.0, 1.0]
    """
    for name, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise UserError(
                f"{name} has {len(values)} values but the images have {channels} channels; give 1 or {channels}"
            )
    m = torch.tensor(list(mean), dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1)
    return 1.0 / (255.0 * s), -m / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the normalisation: float ``(N, C, H, W)`` batches back to their uint8 pixels.

    >>> pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    >>> scale, shift = normalization([0.5], [0.5], 3)
    >>> denormalize(pixels * scale + shift, [0.5], [0.5]).flatten().tolist()
    [0, 128, 255]
    """
    scale, shift = (t.to(x.device) for t in normalization(mean, std, x.shape[1]))
    # Rounding recovers the exact pixel: normalising moved it by far less than half a step.
    return ((x - shift) / scale).round_().clamp_(0, 255).to(torch.uint8)


class TensorLoader:
    """Batches ``(float images, labels)`` straight from a uint8 tensor held on the training device.

    Each epoch gets a fresh shuffle seeded by ``(seed, epoch)``, so a resumed run sees exactly
    the order an uninterrupted run would. Normalisation is a whole-batch tensor op: no
    per-sample Python.

    ``buffers=k`` writes batches into ``k`` recycled float buffers instead of fresh tensors:
    allocating a fresh 3 MB batch each step costs page faults and cold caches worth a third of
    the data time. A yielded batch then stays valid only while the next ``k - 1`` are drawn,
    which suits a training loop (the trainer uses 3); ``clone()`` a batch to keep it longer.

    ``augment(uint8_batch, generator)`` transforms each training batch before normalisation;
    its generator is seeded by ``(seed, epoch, batch)``, so a resumed run augments alike.

    Float ``images`` count as prepared already (whitened, see :mod:`ignite_mlp.whitening`): they
    are served as they are, augmented but not normalised. ``mix(batch, labels, generator)``
    mixes each normalised training batch and turns its labels into class probabilities
    (:func:`ignite_mlp.augment.make_mix`), from the same generator as ``augment``.

    ``keep_normalized=True`` (not with ``augment``) normalises the images once, on the first
    pass, into a float copy (4 bytes per input value) and serves batches from it: views of it
    without shuffling, a gather from it with. Validation images never change, so normalising
    them again each epoch would be wasted work. (For shuffled training data the copy saves
    little: gathering floats moves four times the bytes of gathering uint8.)

    ``rank`` and ``world_size`` make this the loader of one process of a data-parallel run.
    Every rank draws the same permutation for ``(seed, epoch)`` and takes every
    ``world_size``-th sample of it, starting at its rank; ``batch_size`` stays the *global*
    batch and each rank yields ``batch_size // world_size`` of it (it must divide evenly). Rank
    r's batch i is then the part of the single-process batch i at positions r, r + world_size,
    ..., so the ranks together step through exactly the batches one process would. With
    ``even_shards=True`` (training: every rank must take the same number of steps) the last
    ``N % world_size`` samples of each epoch's order are left out; with ``False``
    (validation, where no rank waits on another per batch) every sample goes to exactly one
    rank and shards differ by at most one sample.

    >>> images = torch.arange(6, dtype=torch.uint8).reshape(6, 1, 1, 1)
    >>> loader = TensorLoader(images, torch.arange(6), batch_size=4, mean=[0.0], std=[1 / 255])
    >>> [y.tolist() for _, y in loader]
    [[0, 1, 2, 3], [4, 5]]
    >>> len(loader)
    2
    >>> [[y.tolist() for _, y in TensorLoader(images, torch.arange(6), 4, [0.0], [1 / 255], rank=r, world_size=2)]
    ...  for r in (0, 1)]
    [[[0, 2], [4]], [[1, 3], [5]]]
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        buffers: int = 0,
        keep_normalized: bool = False,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        mix: Mix | None = None,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = True,
    ) -> None:
        if not (images.dtype == torch.uint8 or images.is_floating_point()) or images.ndim != 4:
            raise ValueError(f"images must be uint8 or float (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} processes")
        self.device = torch.device(device)
        # One copy on the device, made once: on CUDA, batches never cross the bus again.
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        # What this rank yields; the ranks' batches together make the global ``batch_size``.
        self.batch_size = batch_size // world_size
        self.rank, self.world_size = rank, world_size
        n = len(labels)
        # The positions of each epoch's order that are used at all (see the class docstring).
        self._used = n - n % world_size if even_shards else n
        self._shard_size = len(range(rank, self._used, world_size))
        # Without shuffling, the shard is a fixed strided view (the whole tensor for one process).
        self._shard_images = self.images[rank : self._used : world_size]
        self._shard_labels = self.labels[rank : self._used : world_size]
        # Augmentation seeds: one process keeps its (seed, epoch, batch) key; ranks add theirs,
        # so they do not draw the same random numbers for different images.
        self._augment_key = (rank,) if world_size > 1 else ()
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        if keep_normalized and augment is not None:
            raise ValueError("keep_normalized serves the images as they are; it cannot be combined with augment")
        self.buffers = buffers
        self.augment = augment
        self.mix = mix
        self.prepared = images.is_floating_point()  # whitened already: no normalisation
        self.epoch = 1
        self.start = 0
        self.scale, self.shift = (t.to(self.device) for t in normalization(mean, std, images.shape[1]))
        self.keep_normalized = keep_normalized
        self._normalized: torch.Tensor | None = None  # made on the first pass

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose which epoch's shuffle the next pass uses, and the batch it starts at
        (non-zero only when a run resumes mid-epoch). The trainer calls this each epoch."""
        if not 0 <= start < max(len(self), 1):
            raise ValueError(f"start batch {start} outside this epoch's {len(self)} batches")
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        n = self._shard_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, *key: int, device: torch.device | None = None) -> torch.Generator:
        """A generator seeded by ``(seed, *key)``: same key, same random numbers."""
        state = np.random.SeedSequence([self.seed, *key]).generate_state(1, dtype=np.uint64)
        return torch.Generator(device=device or self.device).manual_seed(int(state[0] % (2**63)))

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch``: a pure function of (seed, epoch)."""
        generator = self._generator(epoch, device=torch.device("cpu"))
        return torch.randperm(len(self.labels), generator=generator).to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the permutation is drawn at the first next(), after the trainer's
        # EPOCH_STARTED handler has set the epoch, however early the engine calls iter().
        # Every rank draws the whole permutation and keeps its own positions of it.
        order = self.permutation(self.epoch)[self.rank : self._used : self.world_size] if self.shuffle else None
        if self.keep_normalized and self._normalized is None and not self.prepared:
            # A shuffled rank gathers from the whole set; an ordered one reads its shard only.
            self._normalized = self._normalize_all(self.images if self.shuffle else self._shard_images)
        start, self.start = self.start, 0  # a resume offset applies to one pass only
        shape = (self.batch_size, *self.images.shape[1:])
        ring = [torch.empty(shape, device=self.device) for _ in range(self.buffers)]
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self._shard_size)
            out = ring[i % len(ring)][: hi - lo] if ring else None
            if order is None:
                y = self._shard_labels[lo:hi]
                if self._normalized is not None:
                    yield self._normalized[lo:hi], y
                    continue
                x = self._shard_images[lo:hi]
            else:
                idx = order[lo:hi]
                y = self.labels.index_select(0, idx)
                if self._normalized is not None:
                    yield torch.index_select(self._normalized, 0, idx, out=out) if ring else self._normalized[idx], y
                    continue
                x = self.images.index_select(0, idx)
            generator = self._generator(self.epoch, i, *self._augment_key) if self.augment or self.mix else None
            if self.augment is not None:
                x = self.augment(x, generator)  # type: ignore[arg-type]
            x = x if self.prepared else self.normalize(x, out)
            yield self.mix(x, y, generator) if self.mix is not None else (x, y)  # type: ignore[arg-type]

    def normalize(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(x / 255 - mean) / std`` for a uint8 batch, into ``out`` when given."""
        out = torch.empty(x.shape, device=x.device) if out is None else out
        # Three simple passes (convert, scale, shift): each is vectorised. Converting inside
        # the multiply (uint8 * float) is one pass fewer but takes 60% longer on a CPU.
        return out.copy_(x).mul_(self.scale).add_(self.shift)

    def _normalize_all(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """A normalised float copy of ``images``, made a chunk at a time (no second full-size
        temporary); the same arithmetic as :meth:`normalize`, so the same values."""
        result = torch.empty(images.shape, device=self.device)
        for lo in range(0, len(images), chunk):
            self.normalize(images[lo : lo + chunk], result[lo : lo + chunk])
        return result
