"""The one-image-at-a-time decoder ignite_mlp used before decoding moved to a process pool
(:mod:`ignite_mlp.data.parallel`): the benchmark's "old decoder", and the tests' oracle for the
pool's pixels (plain Pillow, one file after another, none of the pool's JPEG path).

Import it with ``benchmarks/`` on ``sys.path`` (as ``python benchmarks/benchmark.py`` has).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ignite_mlp.data import Dataset
from ignite_mlp.data.images import check_classes, iter_tarball, iter_tree


def decode_pillow(data: bytes) -> torch.Tensor:
    """One image file as uint8 ``(C, H, W)``: gray stays 1 channel, RGBA 4, other modes become RGB."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "RGB", "RGBA"):
            img = img.convert("RGB")
        array = np.asarray(img)
    return torch.from_numpy(np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)))


def read_class_folders_serial(path: Path, kind: str, progress: bool = False) -> Dataset:
    """Decode a tree (``kind="tree"``) or tarball (``"tarball"``) one image at a time in this
    process, with Pillow, into a :class:`Dataset` sorted by (class, file name)."""
    entries = iter_tarball(path) if kind == "tarball" else iter_tree(path)
    images: dict[str, list[tuple[str, str, torch.Tensor]]] = {"train": [], "test": []}
    class_dirs: dict[str, set[str]] = {"train": set(), "test": set()}
    for split, cls, name, data in tqdm(entries, desc="decoding images", unit="img", disable=not progress):
        class_dirs[split].add(cls)
        if data is not None:
            images[split].append((cls, name, decode_pillow(data)))
    counts = {split: Counter(cls for cls, _, _ in images[split]) for split in images}
    classes = check_classes(path, class_dirs, counts)
    index = {c: i for i, c in enumerate(classes)}
    tensors = []
    for split in ("train", "test"):
        # Sorted: tarball member order is arbitrary, the result must not be.
        ordered = sorted(images[split], key=lambda e: (e[0], e[1]))
        tensors.append(torch.stack([img for _, _, img in ordered]))
        tensors.append(torch.tensor([index[cls] for cls, _, _ in ordered], dtype=torch.int64))
    return Dataset(*tensors, classes=classes, source=str(path))
