"""A tour of bad inputs given to the real command (``python -m ignite_mlp``): each must be answered
with one line on stderr and exit status 2, no traceback, and nothing written outside the case's
own folder (no data file, run or checkpoint of the shared set-up changed, no payload run). An
input that is odd but harmless (an archive member that is a link or a device, a dangling symlink
as --out) must instead succeed, exit 0, and write its output in the case's folder. The cases
cover every reader (images, archives, CIFAR-10 pickles, data files, checkpoints, a run's
config.json and whitening, TOML files, search spaces, option values) and every writer (--out,
--run-dir, export); docs/reliability.md lists the promises they hold.

The set-up (tiny trees, damaged copies, one trained run, one whitened run) is a world, built
twice: the cases are dealt to two worlds, toured side by side in two threads. Every case runs
once, in the module's fixture: a few as typed, in a new interpreter, the others each in a process
forked from one that has imported torch already (tests/cli_forker.py), which saves about 3 s of
CPU a case. Within a world the cases run one at a time, and the world is looked at after each:
every answer holds what its own case changed outside its folder (and any payload marker it left),
so each test checks one case's answer and a case that writes outside fails alone, under its own
name.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Payload, make_tree
from PIL import Image

from ignite_mlp import TrainConfig, train
from ignite_mlp.data import cache

ROOT = Path(__file__).resolve().parents[1]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _copy(tree: Path, to: Path) -> Path:
    shutil.copytree(tree, to)
    return to


def build_world(w: Path) -> None:
    """Every file and folder the cases point at, under ``w``."""
    tree = make_tree(w / "tree")
    (w / "empty").mkdir()
    (w / "notgz.tar.gz").write_text("plain text")
    (w / "afile").write_text("x")
    for f in (_copy(tree, w / "t_empty") / "test" / "cat").iterdir():
        f.unlink()
    (_copy(tree, w / "t_corrupt") / "train" / "bee" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    victim = _copy(tree, w / "t_trunc") / "train" / "ant" / "0001.png"
    victim.write_bytes(victim.read_bytes()[:60])
    (_copy(tree, w / "t_mismatch") / "test" / "cat").rename(w / "t_mismatch" / "test" / "dog")
    renamed = _copy(tree, w / "t_renamed")
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "dog")
    make_tree(w / "t_small", size=4)
    # A PNG declaring 40000x40000 pixels: 4.8 GB once decoded, 45 bytes on disk.
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    (_copy(tree, w / "t_bomb") / "train" / "ant" / "0003.png").write_bytes(bomb)
    with open(_copy(tree, w / "t_huge") / "test" / "bee" / "0002.png", "r+b") as f:
        f.truncate(100 * 2**20)  # 100 MB, sparse: nothing is written
    (w / "damaged.mlpdata").write_bytes(b"IGNITE-MLP-DATA1" + bytes(100))
    cifar = w / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        (cifar / name).write_bytes(pickle.dumps(Payload(w / "PWNED") if name == "data_batch_1" else batch))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    (w / "negated.toml").write_text("no-progress = true\n")
    (w / "twice.toml").write_text('handler = ["a:attach"]\nhandlers = ["b:attach"]\n')
    (w / "auto.toml").write_text('resume = "auto"\n')

    # One finished run of 1 epoch, and copies of it with a damaged last checkpoint. (No cache_dir
    # in their config: a case that reads data through them then uses its own folder's cache.)
    quiet = {"progress": False, "epochs": 1}
    train(TrainConfig(data=str(tree), run_dir=str(w / "done"), **quiet), write=lambda s: None)
    for name, damage in (("truncated", None), ("payload", Payload(w / "PWNED"))):
        run = _copy(w / "done", w / f"done_{name}")
        last = next((run / "checkpoints").glob("last_*.pt"))
        if damage is None:
            last.write_bytes(last.read_bytes()[:200])
        else:
            torch.save({"model": damage}, last)
    # A whitened run, and copies with its whitening.pt damaged or gone.
    train(TrainConfig(data=str(tree), run_dir=str(w / "white"), whiten="zca", **quiet), write=lambda s: None)
    (_copy(w / "white", w / "white_corrupt") / "whitening.pt").write_bytes(b"garbage")
    (_copy(w / "white", w / "white_missing") / "whitening.pt").unlink()
    # As if the export extra were not installed: this module shadows onnxruntime.
    (w / "no_onnxruntime").mkdir()
    (w / "no_onnxruntime" / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    build_hostile(w)


@dataclass
class Case:
    name: str
    # The arguments, from the world's folder and the case's own folder.
    argv: Callable[[Path, Path], list[str]]
    message: str  # a part of the line expected (of the last, with several)
    extra_path: str = ""  # a folder of the world put first on PYTHONPATH
    lines: int = 1
    # Run in a new interpreter, as typed, rather than forked from a warm one: the first import's
    # output (a warning at import time, say) would show here.
    fresh: bool = False
    status: int = 2  # 0: the input is harmless and the command does its work
    env: dict[str, str] = field(default_factory=dict)  # added to the case's environment
    writes: str = ""  # with status 0: the file (in the case's folder) the command must write
    shows: str = ""  # with status 0: a part of stdout (predict's table: an image classified)
    hides: str = ""  # with status 0: what stdout must not name (a member that is no regular file)


def _train(*args: str) -> Callable[[Path, Path], list[str]]:
    """``train`` into the case's folder; ``{w}`` in an argument is the world's folder."""
    return lambda w, here: ["train", "--no-progress", "--run-dir", str(here / "r"), *(a.format(w=w) for a in args)]


def _cmd(*args: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, here: [a.format(w=w, here=here) for a in args]


CASES = [
    Case("missing data path", _train("--data", "{w}/missing", "--no-download"), "downloading is off", fresh=True),
    Case("empty data folder, offline", _train("--data", "{w}/empty"), "could not download"),
    Case("empty class folder", _train("--data", "{w}/t_empty"), "class folder test/cat holds no images"),
    Case("corrupt image", _train("--data", "{w}/t_corrupt"), "0002.png: corrupt image"),
    Case("truncated image", _train("--data", "{w}/t_trunc"), "0001.png: corrupt or truncated image"),
    Case("train/ and test/ classes differ", _train("--data", "{w}/t_mismatch"), "hold different classes"),
    Case("not a gzip tarball", _train("--data", "{w}/notgz.tar.gz"), "not a gzip tarball"),
    Case("hidden sizes empty", _train("--hidden-sizes"), "--hidden-sizes: expected at least one argument"),
    Case("hidden sizes zero", _train("--hidden-sizes", "0"), "--hidden-sizes must be all >= 1"),
    Case("hidden sizes negative", _train("--hidden-sizes", "-5"), "--hidden-sizes must be all >= 1"),
    Case("hidden sizes not integers", _train("--hidden-sizes", "wide"), "--hidden-sizes expects int"),
    Case("lr 0", _train("--lr", "0"), "--lr must be > 0", fresh=True),
    Case("batch size 0", _train("--batch-size", "0"), "--batch-size must be >= 1"),
    Case("epochs 0", _train("--epochs", "0"), "--epochs must be >= 1"),
    Case(
        "seed below 0",
        _train("--seed", "-1"),
        "--seed must be in [0, 2**32 - 1]",
    ),
    Case("seed of 2**32", _train("--seed", str(2**32)), "--seed must be in [0, 2**32 - 1]"),
    Case("Nesterov without momentum", _train("--recipe", "strong", "--momentum", "0"), "--momentum must be > 0"),
    Case("infinite learning rate", _train("--lr", "inf"), "--lr must be a finite number"),
    Case("infinite std", _train("--std", "0.5", "inf", "0.5"), "--std must be a finite number"),
    Case("lr neither a number nor auto", _train("--lr", "fast"), "--lr must be a number or auto"),
    Case("unknown device", _train("--device", "tpu"), "--device must be auto, cpu, cuda or cuda:N"),
    Case("unknown progress mode", _train("--progress", "sometimes"), "--progress must be one of"),
    Case("unknown precision", _train("--precision", "fp16"), "--precision must be one of"),
    Case("unknown whitening", _train("--whiten", "pca2"), "--whiten must be one of"),
    Case(
        "negative whitening regulariser",
        _train("--whiten", "zca", "--whiten-regularizer", "-1"),
        "--whiten-regularizer must be >= 0",
    ),
    Case("EMA momentum of 1", _train("--ema-momentum", "1"), "--ema-momentum must be in [0, 1)"),
    Case("negative MixUp parameter", _train("--mixup", "-0.2"), "--mixup must be >= 0"),
    Case("unknown optimizer", _train("--optimizer", "lion"), "--optimizer must be one of"),
    Case("abbreviated option", _train("--hidden-size", "64"), "did you mean --hidden-sizes?"),
    Case(
        "crop padding the images cannot hold",
        _train("--data", "{w}/tree", "--augment", "crop", "--crop-padding", "8"),
        "--crop-padding must be below the image size 8x8",
    ),
    Case(
        "exact ZCA of too few images",
        _train("--data", "{w}/tree", "--whiten", "zca", "--whiten-regularizer", "0"),
        "covariance is singular",
    ),
    Case(
        "unwritable run directory",
        _cmd("train", "--no-progress", "--data", "{w}/tree", "--run-dir", "{w}/afile/run"),
        "cannot write there",
    ),
    Case(
        "run directory already holds a run",
        _cmd("train", "--no-progress", "--data", "{w}/tree", "--run-dir", "{w}/done"),
        "already holds a run",
    ),
    Case(
        "resume with another architecture",
        _cmd("train", "--no-progress", "--resume", "{w}/done", "--epochs", "2", "--hidden-sizes", "64"),
        "the checkpoint's architecture differs",
    ),
    Case(
        "resume from a truncated checkpoint",
        _cmd("train", "--no-progress", "--resume", "{w}/done_truncated", "--epochs", "2"),
        "corrupt or truncated checkpoint",
    ),
    Case(
        "checkpoint needing arbitrary unpickling",
        _cmd("train", "--no-progress", "--resume", "{w}/done_payload", "--epochs", "2"),
        "refused",
        fresh=True,
    ),
    Case(
        "resume that changes the batch size",
        _cmd("train", "--no-progress", "--resume", "{w}/done", "--batch-size", "4"),
        "cannot change --batch-size 256 -> 4",
    ),
    Case(
        "resume that changes the activation",
        _cmd("train", "--no-progress", "--resume", "{w}/done", "--epochs", "2", "--activation", "gelu"),
        "cannot change --activation relu -> gelu",
    ),
    Case(
        "resume of a finished run", _cmd("train", "--no-progress", "--resume", "{w}/done"), "already finished 1 epochs"
    ),
    Case("resume of a missing run", _cmd("train", "--resume", "{w}/nope"), "no run there"),
    Case(
        "lr auto on a resumed run",
        _cmd("train", "--resume", "{w}/done", "--epochs", "2", "--lr", "auto"),
        "--lr auto finds a rate for a new run",
    ),
    Case(
        "handler spec that does not import",
        _train("--handler", "no_such_module:attach"),
        "cannot import no_such_module",
    ),
    Case("switch written as no-progress in run.toml", _train("--config", "{w}/negated.toml"), "not no-progress = true"),
    Case(
        "handler and handlers both in run.toml",
        _train("--config", "{w}/twice.toml"),
        "handler and handlers set the same option",
    ),
    Case(
        'resume = "auto", nothing to resume', _cmd("train", "--config", "{w}/auto.toml"), "no resumable run under runs/"
    ),
    Case("CIFAR-10 batch that would run code", _train("--data", "{w}/cifar"), "not a CIFAR-10 batch, refused"),
    Case(
        "image declaring 40000x40000 pixels",
        _train("--data", "{w}/t_bomb"),
        "0003.png: Image size (1600000000 pixels) exceeds",
    ),
    Case("image file of 100 MB", _train("--data", "{w}/t_huge"), "0002.png: 104857600 bytes"),
    Case("damaged data file", _train("--data", "{w}/damaged.mlpdata"), "damaged data file"),
    Case(
        "evaluate on data with other class names",
        _cmd("evaluate", "{w}/done", "--data", "{w}/t_renamed", "--out", "{here}/cm.png"),
        "its 3 classes are not the run's 3",
    ),
    Case(
        "evaluate on images of another shape",
        _cmd("evaluate", "{w}/done", "--data", "{w}/t_small", "--out", "{here}/cm.png"),
        "its images are 3x4x4",
    ),
    Case(
        "evaluate on an unknown device",
        _cmd("evaluate", "{w}/done", "--device", "tpu", "--out", "{here}/cm.png"),
        "--device must be auto, cpu, cuda or cuda:N",
    ),
    Case(
        "evaluate a whitened run whose whitening.pt is corrupt",
        _cmd("evaluate", "{w}/white_corrupt", "--out", "{here}/cm.png"),
        "whitening.pt: not a whitening file",
    ),
    Case(
        "evaluate a whitened run without its whitening.pt",
        _cmd("evaluate", "{w}/white_missing", "--out", "{here}/cm.png"),
        "whitening.pt: missing",
    ),
    Case(
        "samples with seed below 0",
        _cmd("samples", "--data", "{w}/tree", "--seed", "-1", "--out", "{here}/s.png"),
        "--seed must be in [0, 2**32 - 1]",
    ),
    Case(
        "lr-find with start above end",
        # --no-progress: else the line saying the data were decoded comes first (the rates are
        # checked once the data are loaded).
        _cmd("lr-find", "--no-progress", "--data", "{w}/tree", "--start-lr", "1", "--end-lr", "0.1"),
        "need 0 < start < end",
    ),
    Case("predict with a folder that is no run", _cmd("predict", "{w}/empty", "{w}/tree"), "neither a run directory"),
    Case(
        "predict, nothing readable",
        _cmd("predict", "{w}/done", "{w}/notgz.tar.gz", "{w}/afile"),
        "2 input(s) could not be read, 0 classified",
        lines=3,  # one per input that could not be read, then the count
    ),
    Case("predict --top-k 0", _cmd("predict", "{w}/done", "{w}/tree", "--top-k", "0"), "--top-k must be >= 1"),
    Case(
        "export to a missing folder",
        _cmd("export", "{w}/done", "--format", "onnx", "--out", "{w}/no/m.onnx"),
        "does not exist; create it or choose another --out",
    ),
    Case(
        "export --format onnx without the export extra",
        _cmd("export", "{w}/done", "--format", "onnx", "--out", "{here}/m.onnx"),
        "ONNX export needs onnxruntime, which is not installed",
        extra_path="no_onnxruntime",
        fresh=True,
    ),
]
if torch.cuda.is_available():  # the case needs a machine without CUDA
    CUDA_CASES = []
else:
    CUDA_CASES = [Case("CUDA without one", _train("--device", "cuda", "--data", "{w}/tree"), "CUDA is not available")]


# ---------------------------------------------------------------------------- the hostile tour
# Crafted files for every reader and writer, built in the world's folder (no binary fixtures).


def _tar(out: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A .tar.gz of the given members, each a crafted header and its bytes (None: no body)."""
    with tarfile.open(out, "w:gz") as tar:
        for info, body in members:
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return out


def _member(name: str, body: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(body) if kind == tarfile.REGTYPE else 0
    return info, body if kind == tarfile.REGTYPE else None


def _tree_members(tree: Path) -> list[tuple]:
    return [_member(str(f.relative_to(tree)), f.read_bytes()) for f in sorted(tree.rglob("*.png"))]


ARCHIVE_EXTRAS = {
    "member named ../": ("../train/ant/escape.png", tarfile.REGTYPE, ""),
    "member with an absolute name": ("/abs/train/ant/abs.png", tarfile.REGTYPE, ""),
    "symlink member": ("train/ant/link.png", tarfile.SYMTYPE, "/etc/passwd"),
    "symlink member leading out": ("train/ant/up.png", tarfile.SYMTYPE, "../../../../outside.png"),
    "hardlink member": ("train/ant/hard.png", tarfile.LNKTYPE, "/etc/passwd"),
    "character device member": ("train/ant/dev.png", tarfile.CHRTYPE, ""),
    "block device member": ("train/ant/blk.png", tarfile.BLKTYPE, ""),
    "fifo member": ("train/ant/fifo.png", tarfile.FIFOTYPE, ""),
}


def _cifar(folder: Path, batch: object = None, meta: object = None, raw: bytes | None = None) -> Path:
    """A tiny cifar-10-batches-py whose data_batch_1 is ``batch`` (or ``raw`` bytes) and whose
    batches.meta is ``meta``, the rest well formed."""
    cifar = folder / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    good = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        chosen = batch if (name == "data_batch_1" and batch is not None) else good
        (cifar / name).write_bytes(raw if (name == "data_batch_1" and raw is not None) else pickle.dumps(chosen))
    (cifar / "batches.meta").write_bytes(pickle.dumps(meta if meta is not None else {b"label_names": [b"a", b"b"]}))
    return folder


def _data_file(path: Path, change: Callable[[dict], object] | None = None, cut: int = 0, raw: bytes = b"") -> None:
    """A data file of 2 train and 2 test 3x8x8 images, its header changed by ``change`` (which may
    return a replacement), its body cut by ``cut`` bytes, or ``raw`` as its header's text."""
    header = cache._layout(["a", "b"], (2, 3, 8, 8), (2, 3, 8, 8))
    size = header["size"]
    if change is not None:
        header = change(header) or header
    body = raw or json.dumps(header).encode()
    blob = cache.MAGIC + len(body).to_bytes(8, "little") + body
    data = bytearray(max(size, len(blob)))
    data[: len(blob)] = blob
    path.write_bytes(bytes(data[: len(data) - cut]))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _set(path: list, value: object) -> Callable[[dict], None]:
    def change(header: dict) -> None:
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


DATA_FILES = {
    "negative image count": (_set(["arrays", "train_images", "shape", 0], -2), "damaged data file"),
    "negative label count": (_set(["arrays", "train_labels", "shape"], [-2]), "damaged data file"),
    "huge image count": (_set(["arrays", "train_images", "shape", 0], 10**30), "damaged data file"),
    "string shape": (_set(["arrays", "train_images", "shape"], "2388"), "damaged data file"),
    "string in a shape": (_set(["arrays", "train_images", "shape", 1], "3"), "damaged data file"),
    "float offset": (_set(["arrays", "test_images", "offset"], 4096.5), "damaged data file"),
    "negative offset": (_set(["arrays", "train_images", "offset"], -4096), "damaged data file"),
    "huge size": (_set(["size"], 10**400), "damaged data file"),
    "null classes": (_set(["classes"], None), "damaged data file"),
    "classes of numbers": (_set(["classes"], [1, 2]), "damaged data file"),
    "float dtype": (_set(["arrays", "train_images", "dtype"], "float64"), "damaged data file"),
    "object dtype": (_set(["arrays", "train_labels", "dtype"], "O"), "damaged data file"),
    "header a list": (lambda h: [h], "damaged data file"),
    "arrays a string": (_set(["arrays"], "x"), "damaged data file"),
}


def _checkpoint_kinds(model: dict[str, torch.Tensor], wrap: Callable[[object], object], w: Path) -> dict:
    """Each crafted content a checkpoint file may have, by name: a function writing it to a path."""
    first = next(iter(model))

    def with_first(tensor: torch.Tensor) -> object:
        return wrap({**model, first: tensor})

    def nested(depth: int) -> dict:
        meta: dict = {}
        for _ in range(depth):
            meta = {"m": meta}
        return meta

    def script(path: Path) -> None:
        with warnings.catch_warnings():  # TorchScript's deprecation: the file is what a user may still hold
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))

    return {
        "a string": lambda p: torch.save("weights", p),
        "None": lambda p: torch.save(None, p),
        "a sparse tensor": lambda p: torch.save(with_first(model[first].to_sparse()), p),
        "nested metadata": lambda p: torch.save({**wrap(model), "meta": nested(200)}, p),  # type: ignore[dict-item]
        "a wrong shape": lambda p: torch.save(with_first(torch.zeros(2, 2)), p),
        "NaN weights": lambda p: torch.save(with_first(torch.full_like(model[first], float("nan"))), p),
        "a TorchScript file": script,
        "a pickle payload": lambda p: torch.save(wrap({**model, first: Payload(w / "PWNED")}), p),
        "zero bytes": lambda p: p.write_bytes(b""),
        "text": lambda p: p.write_text("not a checkpoint\n"),
        "a float64 tensor": lambda p: torch.save(with_first(model[first].double()), p),
        "a list": lambda p: torch.save([model[first]], p),
    }


CONFIG_FIELDS = {
    "hidden sizes a string": ("hidden_sizes", "wide"),
    "hidden sizes nested": ("hidden_sizes", [[8]]),
    "hidden sizes negative": ("hidden_sizes", [-8]),
    "learning rate a string": ("lr", "fast"),
    "epochs null": ("epochs", None),
    "batch size a float": ("batch_size", 2.5),
    "classes a string": ("classes", "abc"),
    "classes numbers": ("classes", [1, 2, 3]),
    "image shape with a string": ("image_shape", [3, "8", 8]),
    "image shape negative": ("image_shape", [3, -8, 8]),
    "image shape huge": ("image_shape", [3, 10**6, 10**6]),
    "mean NaN": ("mean", [float("nan")] * 3),
    "std infinite": ("std", [float("inf")] * 3),
    "activation unknown": ("activation", "evil"),
    "norm a number": ("norm", 5),
    "whiten an object": ("whiten", {"a": 1}),
    "handlers a string": ("handlers", "evil:attach"),
    "dropout a list": ("dropout", [0.1]),
}


def build_hostile(w: Path) -> None:
    """The crafted inputs of the hostile tour, under ``w``."""
    tree = w / "tree"
    # Images, each bad kind, each in its own copy of the tree (train reads all) and alone (predict).
    (w / "img").mkdir()
    png = (tree / "train" / "ant" / "0000.png").read_bytes()
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    gif_bomb = gif.getvalue()[:6] + struct.pack("<HH", 60000, 60000) + gif.getvalue()[10:]  # the screen's size
    nan_tiff = io.BytesIO()
    Image.fromarray(np.full((8, 8), np.nan, dtype=np.float32), mode="F").save(nan_tiff, format="TIFF")
    inf_tiff = io.BytesIO()
    Image.fromarray(np.full((8, 8), np.inf, dtype=np.float32), mode="F").save(inf_tiff, format="TIFF")
    images = {
        "zero_bytes.png": b"",
        "text.png": b"plain text, not an image\n",
        "jpeg_named.png": b"\xff\xd8\xff\xe0" + bytes(20),
        "png_named.jpg": png[:40],
        "gif_bomb.gif": gif_bomb,
        "nan.tif": nan_tiff.getvalue(),
        "inf.tif": inf_tiff.getvalue(),
    }
    for name, body in images.items():
        (w / "img" / name).write_bytes(body)
        (_copy(tree, w / f"t_{name.replace('.', '_')}") / "train" / "bee" / name).write_bytes(body)
    (w / "img" / "good.png").write_bytes(png)

    # Archives: a good tree plus one hostile member each.
    good = _tree_members(tree)
    for i, (_label, (name, kind, link)) in enumerate(ARCHIVE_EXTRAS.items()):
        _tar(w / f"a{i}.tar.gz", [*good, _member(name, png, kind, link)])
    _tar(w / "a_many.tar.gz", good)
    (w / "a_truncated.tar.gz").write_bytes((w / "a_many.tar.gz").read_bytes()[:300])
    with gzip.open(w / "a_gzip_text.tar.gz", "wb") as f:
        f.write(b"a gzip of no tarball" * 100)
    (w / "a_gzip_bad_crc.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"garbage that does not inflate")
    _tar(w / "a_empty.tar.gz", [])
    _tar(
        w / "a_payload.tar.gz",
        [
            _member(f"cifar-10-batches-py/{n.name}", n.read_bytes())
            for n in sorted((w / "cifar" / "cifar-10-batches-py").iterdir())
        ],
    )

    # CIFAR-10 pickles, each wrong in one way.
    ints = np.zeros((2, 3072), dtype=np.int64)
    cifars = {
        "data a string": {b"data": "pixels", b"labels": [0, 1]},
        "labels a dict": {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": {0: 1}},
        "label 10**30": {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10**30]},
        "negative label": {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, -1]},
        "float pixels": {b"data": np.full((2, 3072), 0.5), b"labels": [0, 1]},
        "pixels above 255": {b"data": ints + 300, b"labels": [0, 1]},
        "pixels of the wrong length": {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]},
        "batch a list": [1, 2, 3],
        "no labels": {b"data": np.zeros((2, 3072), dtype=np.uint8)},
    }
    for i, batch in enumerate(cifars.values()):
        _cifar(w / f"c{i}", batch=batch)
    _cifar(w / "c_meta_payload", meta=Payload(w / "PWNED"))
    _cifar(w / "c_meta_string", meta="names")
    _cifar(w / "c_truncated", raw=pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8)})[:50])
    _cifar(w / "c_eval", raw=b"cos\nsystem\n(S'touch PWNED'\ntR.")
    _cifar(w / "c_huge", raw=b"")
    with open(w / "c_huge" / "cifar-10-batches-py" / "data_batch_1", "r+b") as f:
        f.truncate(300 * 2**20)  # sparse

    # Data files.
    for i, (change, _) in enumerate(DATA_FILES.values()):
        _data_file(w / f"d{i}.mlpdata", change)
    _data_file(w / "d_truncated.mlpdata", cut=100)
    _data_file(w / "d_deep.mlpdata", raw=_nested(100_000).encode())
    _data_file(w / "d_huge_int.mlpdata", raw=b'{"size": ' + b"9" * 5000 + b"}")
    _data_file(w / "d_inf.mlpdata", raw=b'{"size": 1e400}')
    _data_file(w / "d_not_utf8.mlpdata", raw=b"\xff\xfe\xfd")
    (w / "d_length.mlpdata").write_bytes(cache.MAGIC + (2**63).to_bytes(8, "little") + b"{}")
    (w / "d_short.mlpdata").write_bytes(cache.MAGIC + b"\x01")

    # Checkpoints, each crafted content given to evaluate, predict and export, and as a resumed run's last.
    best = next((w / "done" / "checkpoints").glob("best_*.pt"))
    saved = torch.load(best, weights_only=True)
    model, wrap = (saved["model"], lambda m: {**saved, "model": m}) if "model" in saved else (saved, lambda m: m)
    (w / "ck").mkdir()
    _copy(w / "done", w / "ck" / "run")
    for i, write in enumerate(_checkpoint_kinds(model, wrap, w).values()):
        write(w / "ck" / "run" / "checkpoints" / f"crafted_{i}.pt")
        resumed = _copy(w / "done", w / "ck" / f"resume_{i}")
        last = next((resumed / "checkpoints").glob("last_*.pt"))
        last_saved = torch.load(last, weights_only=True)
        _checkpoint_kinds(last_saved["model"], lambda m, s=last_saved: {**s, "model": m}, w)[
            list(_checkpoint_kinds(model, wrap, w))[i]
        ](last)

    # A run's config.json, one field wrong each; and whole files that are not a configuration.
    config = json.loads((w / "done" / "config.json").read_text())
    for i, (key, value) in enumerate(CONFIG_FIELDS.values()):
        (_copy(w / "done", w / f"cfg{i}") / "config.json").write_text(json.dumps({**config, key: value}))
    for name, text in (("list", "[]"), ("text", "not json"), ("deep", _nested(100_000)), ("empty", "")):
        (_copy(w / "done", w / f"cfg_{name}") / "config.json").write_text(text)
    (_copy(w / "done", w / "cfg_missing") / "config.json").unlink()

    # Whitening files.
    whitening = torch.load(w / "white" / "whitening.pt", weights_only=True)
    tensors = {k: v for k, v in whitening.items() if isinstance(v, torch.Tensor)}
    key = next(iter(tensors))
    crafted_whitening = {
        "payload": {**whitening, key: Payload(w / "PWNED")},
        "string": "whitening",
        "wrong shape": {**whitening, key: tensors[key].flatten()[:3]},
        "NaN": {**whitening, key: torch.full_like(tensors[key], float("nan"))},
        "sparse": {**whitening, key: tensors[key].to_sparse()},
    }
    for name, content in crafted_whitening.items():
        torch.save(content, _copy(w / "white", w / f"wh_{name.replace(' ', '_')}") / "whitening.pt")

    # TOML run files.
    (w / "evil.py").write_text(f"open({str(w / 'PWNED')!r}, 'w')\ndef attach(trainer, **kw): pass\n")
    tomls = {
        "bad": "lr = \n",
        "unknown": "zzz = 1\n",
        "wrong_type": 'epochs = "ten"\n',
        "nan": "lr = nan\n",
        "inf": "lr = inf\n",
        "list_type": "hidden-sizes = [1.5]\n",
        "table": "[lr]\nx = 1\n",
        "missing_handler": f'handler = ["{w}/no_such.py:attach"]\n',
        "broken_handler": f'handler = ["{w}/broken.py:attach"]\n',
        "deep": "x = " + _nested(100_000) + "\n",
        "binary": "\udcff",
    }
    (w / "broken.py").write_text("def attach(:\n")
    for name, text in tomls.items():
        (w / f"{name}.toml").write_bytes(text.encode("utf-8", "surrogateescape"))
    (w / "toml_folder.toml").mkdir()

    # Search spaces for sweep.
    spaces = {
        "bad": "[search.lr\n",
        "unknown": "[search.wings]\nlow = 1\nhigh = 2\n",
        "reversed": "[search.lr]\nlow = 0.1\nhigh = 0.001\n",
        "nan": "[search.lr]\nlow = nan\nhigh = 0.1\n",
        "wrong_type": '[search.lr]\nlow = "a"\nhigh = 0.1\n',
        "sweep_set": '[fixed]\nrun-dir = "/"\n',
        "fixed_wrong": "[fixed]\nepochs = -3\n",
        "choices_empty": "[search.hidden-sizes]\nchoices = []\n",
        "top_level": "lr = 1\n",
    }
    spaces["ok"] = "[search.lr]\nlow = 1e-4\nhigh = 1e-1\nlog = true\n"
    for name, text in spaces.items():
        (w / f"space_{name}.toml").write_text(text)

    # Writers: links and folders an --out or --run-dir may be pointed at.
    (w / "links").mkdir()
    (w / "links" / "to_config.png").symlink_to(w / "done" / "config.json")
    (w / "links" / "to_checkpoints").symlink_to(w / "done" / "checkpoints")
    (w / "nonrun").mkdir()
    (w / "nonrun" / "notes.txt").write_text("mine")


def _data(path: str, *rest: str) -> Callable[[Path, Path], list[str]]:
    """``samples`` reads ``--data`` through the same loader as train, and writes one small PNG."""
    return _cmd("samples", "--data", path, "--count", "4", "--out", "{here}/s.png", *rest)


HOSTILE_CASES: list[Case] = []
_add = HOSTILE_CASES.append

# Images: train reads a tree holding the file; predict reads the file alone (one line for it, then the count).
for name, message in (
    ("zero_bytes.png", "corrupt"),
    ("text.png", "corrupt"),
    ("jpeg_named.png", "corrupt"),
    ("png_named.jpg", "corrupt"),
    ("gif_bomb.gif", "3600000000 pixels"),
    ("nan.tif", "NaN or infinite"),
    ("inf.tif", "NaN or infinite"),
):
    folder = "t_" + name.replace(".", "_")
    _add(Case(f"image {name} in a tree", _train("--data", "{w}/" + folder), message))
    _add(Case(f"image {name} in a tree, samples", _data("{w}/" + folder), message))
    _add(Case(f"image {name} to predict", _cmd("predict", "{w}/done", "{w}/img/" + name), "cannot read"))
_add(
    Case(
        "one good image to predict",
        _cmd("predict", "{w}/done", "{w}/img/good.png"),
        "",
        status=0,
        lines=0,
        shows="good.png",
    )
)

# Archives: a member that is no plain file is skipped (nothing is ever extracted to disk).
for i, (label, (name, kind, _)) in enumerate(ARCHIVE_EXTRAS.items()):
    _add(Case(f"archive with a {label}", _data(f"{{w}}/a{i}.tar.gz"), "", status=0, lines=0, writes="s.png"))
    # A regular member is classified under its own name (read in memory, whatever its path says);
    # a link or device member is skipped, never followed.
    regular = kind == tarfile.REGTYPE
    _add(
        Case(
            f"archive with a {label}, predict",
            _cmd("predict", "{w}/done", f"{{w}}/a{i}.tar.gz"),
            "",
            status=0,
            lines=0,
            shows=name.rsplit("/", 1)[-1] if regular else "0000.png",
            hides="" if regular else name.rsplit("/", 1)[-1],
        )
    )
_add(
    Case(
        "archive with too many members",
        _data("{w}/a_many.tar.gz"),
        "IGNITE_MLP_MAX_MEMBERS=",
        env={"IGNITE_MLP_MAX_MEMBERS": "5"},
    )
)
_add(
    Case(
        "archive member over the byte limit",
        _data("{w}/a_many.tar.gz"),
        "IGNITE_MLP_MAX_MEMBER_BYTES=",
        env={"IGNITE_MLP_MAX_MEMBER_BYTES": "100"},
    )
)
_add(
    Case(
        "archive over the total byte limit",
        _data("{w}/a_many.tar.gz"),
        "IGNITE_MLP_MAX_TOTAL_BYTES=",
        env={"IGNITE_MLP_MAX_TOTAL_BYTES": "1000"},
    )
)
_add(
    Case("tree with too many files", _data("{w}/tree"), "IGNITE_MLP_MAX_MEMBERS=", env={"IGNITE_MLP_MAX_MEMBERS": "5"})
)
_add(
    Case(
        "limit variable not a number",
        _data("{w}/tree"),
        "IGNITE_MLP_MAX_MEMBERS=many: must be a positive whole number",
        env={"IGNITE_MLP_MAX_MEMBERS": "many"},
    )
)
_add(
    Case(
        "pixel limit variable of 0",
        _data("{w}/tree"),
        "IGNITE_MLP_MAX_PIXELS=0: must be a positive whole number",
        env={"IGNITE_MLP_MAX_PIXELS": "0"},
    )
)
_add(Case("truncated gzip", _data("{w}/a_truncated.tar.gz"), "truncated"))
_add(Case("gzip of no tarball", _data("{w}/a_gzip_text.tar.gz"), "not a gzip tarball"))
_add(Case("gzip that does not inflate", _data("{w}/a_gzip_bad_crc.tar.gz"), "not a gzip tarball"))
_add(Case("empty tarball", _data("{w}/a_empty.tar.gz"), "a_empty.tar.gz"))
_add(Case("tarball of pickles with a payload", _data("{w}/a_payload.tar.gz"), "not a CIFAR-10 batch, refused"))
_add(
    Case(
        "predict on a truncated gzip",
        _cmd("predict", "{w}/done", "{w}/a_truncated.tar.gz"),
        "cannot read",
    )
)

# CIFAR-10 pickles.
for i, (label, message) in enumerate(
    zip(
        [
            "data a string",
            "labels a dict",
            "label 10**30",
            "negative label",
            "float pixels",
            "pixels above 255",
            "pixels of the wrong length",
            "batch a list",
            "no labels",
        ],
        [
            "data_batch_1",
            "data_batch_1",
            "data_batch_1",
            "data_batch_1",
            "not 8-bit integers",
            "not 8-bit integers",
            "data_batch_1",
            "data_batch_1",
            "data_batch_1",
        ],
        strict=False,
    )
):
    _add(Case(f"CIFAR-10 batch with {label}", _data(f"{{w}}/c{i}"), message))
_add(Case("CIFAR-10 batches.meta that would run code", _data("{w}/c_meta_payload"), "refused"))
_add(Case("CIFAR-10 batches.meta a string", _data("{w}/c_meta_string"), "batches.meta"))
_add(Case("CIFAR-10 batch truncated", _data("{w}/c_truncated"), "data_batch_1"))
_add(Case("CIFAR-10 batch calling os.system", _data("{w}/c_eval"), "refused"))
_add(Case("CIFAR-10 batch of 300 MB", _data("{w}/c_huge"), "far more than a CIFAR-10 batch"))
_add(Case("CIFAR-10 payload given to train", _train("--data", "{w}/c_meta_payload"), "refused"))

# Data files given as --data.
for i, (label, (_, message)) in enumerate(DATA_FILES.items()):
    _add(Case(f"data file with {label}", _data(f"{{w}}/d{i}.mlpdata"), message))
for name in ("truncated", "deep", "huge_int", "inf", "not_utf8", "length", "short"):
    _add(Case(f"data file {name}", _data(f"{{w}}/d_{name}.mlpdata"), "damaged data file"))
_add(Case("data file nested 100000 deep to train", _train("--data", "{w}/d_deep.mlpdata"), "damaged data file"))

# Checkpoints given to evaluate, predict, export, and resumed.
_KINDS = [
    "a string",
    "None",
    "a sparse tensor",
    "nested metadata",
    "a wrong shape",
    "NaN weights",
    "a TorchScript file",
    "a pickle payload",
    "zero bytes",
    "text",
    "a float64 tensor",
    "a list",
]
# Harmless to read: a float64 copy of the weights (loaded as float32), and metadata beside them on a resume.
_HARMLESS = {"a float64 tensor", "nested metadata"}


def _resumed(i: int) -> Callable[[Path, Path], list[str]]:
    """Resume a copy (in the case's folder) of the run whose last checkpoint holds the crafted content ``i``."""

    def argv(w: Path, here: Path) -> list[str]:
        shutil.copytree(w / "ck" / f"resume_{i}", here / "run")
        return ["train", "--no-progress", "--resume", str(here / "run"), "--epochs", "2"]

    return argv


for i, kind in enumerate(_KINDS):
    ck = f"{{w}}/ck/run/checkpoints/crafted_{i}.pt"
    ok = kind == "a float64 tensor"  # read as the float32 it was
    answer = {"status": 0, "lines": 0} if ok else {}
    _add(
        Case(
            f"evaluate a checkpoint holding {kind}",
            _cmd("evaluate", ck, "--out", "{here}/cm.png"),
            "" if ok else "crafted_",
            **answer,  # type: ignore[arg-type]
            writes="cm.png" if ok else "",
        )
    )
    _add(
        Case(
            f"predict with a checkpoint holding {kind}",
            _cmd("predict", ck, "{w}/img/good.png"),
            "" if ok else "crafted_",
            **answer,  # type: ignore[arg-type]
        )
    )
    _add(
        Case(
            f"export a checkpoint holding {kind}",
            _cmd("export", ck, "--format", "torchscript", "--out", "{here}/m.pt"),
            "" if ok else "crafted_",
            **answer,  # type: ignore[arg-type]
            writes="m.pt" if ok else "",
        )
    )
    harmless = kind in _HARMLESS
    _add(
        Case(
            f"resume a run whose last checkpoint holds {kind}",
            _resumed(i),
            "" if harmless else "last_checkpoint",
            status=0 if harmless else 2,
            writes="run/checkpoints/last_checkpoint_2.pt" if harmless else "",
        )
    )

# A run's config.json.
for i, label in enumerate(CONFIG_FIELDS):
    _add(Case(f"config.json with {label}", _cmd("evaluate", f"{{w}}/cfg{i}", "--out", "{here}/cm.png"), "config.json"))
for i, label in enumerate(list(CONFIG_FIELDS)[:4]):
    _add(
        Case(f"config.json with {label}, predict", _cmd("predict", f"{{w}}/cfg{i}", "{w}/img/good.png"), "config.json")
    )
    _add(
        Case(
            f"config.json with {label}, resumed",
            _cmd("train", "--resume", f"{{w}}/cfg{i}", "--epochs", "2"),
            "config.json",
        )
    )
for name in ("list", "text", "deep", "empty"):
    _add(Case(f"config.json {name}", _cmd("evaluate", f"{{w}}/cfg_{name}", "--out", "{here}/cm.png"), "config.json"))
    _add(
        Case(
            f"config.json {name}, export",
            _cmd("export", f"{{w}}/cfg_{name}", "--format", "onnx", "--out", "{here}/m.onnx"),
            "config.json",
        )
    )
_add(
    Case(
        "run without config.json",
        _cmd("evaluate", "{w}/cfg_missing", "--out", "{here}/cm.png"),
        "neither a run directory",
    )
)

# Whitening files.
for name in ("payload", "string", "wrong_shape", "NaN", "sparse"):
    _add(Case(f"whitening.pt {name}", _cmd("evaluate", f"{{w}}/wh_{name}", "--out", "{here}/cm.png"), "whitening.pt"))
    _add(Case(f"whitening.pt {name}, predict", _cmd("predict", f"{{w}}/wh_{name}", "{w}/img/good.png"), "whitening.pt"))

# TOML run files.
for name, message in (
    ("bad", "bad.toml"),
    ("unknown", "zzz"),
    ("wrong_type", "epochs"),
    ("nan", "--lr"),
    ("inf", "--lr"),
    ("list_type", "hidden"),
    ("table", "lr"),
    ("missing_handler", "no_such.py"),
    ("broken_handler", "broken.py"),
    ("deep", "deep.toml"),
    ("binary", "binary.toml"),
):
    _add(Case(f"run.toml {name}", _train("--config", f"{{w}}/{name}.toml"), message))
_add(Case("run.toml missing", _train("--config", "{w}/none.toml"), "none.toml"))
_add(Case("run.toml a folder", _train("--config", "{w}/toml_folder.toml"), "toml_folder.toml"))
_add(Case("run.toml bad, lr-find", _cmd("lr-find", "--config", "{w}/bad.toml"), "bad.toml"))

# Search spaces.
for name in (
    "bad",
    "unknown",
    "reversed",
    "nan",
    "wrong_type",
    "sweep_set",
    "fixed_wrong",
    "choices_empty",
    "top_level",
):
    _add(
        Case(
            f"search space {name}",
            _cmd(
                "sweep",
                "--data",
                "{w}/tree",
                "--space",
                f"{{w}}/space_{name}.toml",
                "--sweep-dir",
                "{here}/sw",
                "--trials",
                "1",
            ),
            f"space_{name}.toml",
        )
    )
_add(
    Case(
        "search space missing",
        _cmd(
            "sweep", "--data", "{w}/tree", "--space", "{w}/space_none.toml", "--sweep-dir", "{here}/sw", "--trials", "1"
        ),
        "space_none.toml",
    )
)

# Option values.
_FLOATS = [
    "--lr",
    "--momentum",
    "--weight-decay",
    "--dropout",
    "--label-smoothing",
    "--whiten-regularizer",
    "--mixup",
    "--cutmix",
    "--ema-momentum",
    "--lr-gamma",
    "--val-split",
    "--mean",
    "--std",
]
for flag in _FLOATS:
    for value in ("nan", "inf", "-1e309"):
        _add(Case(f"{flag} {value}", _train(f"{flag}={value}"), f"{flag} must be"))
_INTS = {
    "--epochs": "0",
    "--batch-size": "0",
    "--eval-batch-size": "0",
    "--tb-images-every": "-1",
    "--crop-padding": "-1",
    "--blocks": "-1",
    "--expansion": "0",
    "--lr-step-epochs": "-1",
    "--patience": "-1",
    "--epoch-length": "0",
    "--overfit-batches": "-1",
    "--nproc-per-node": "0",
}
for flag, value in _INTS.items():
    _add(Case(f"{flag} {value}", _train(flag, value), f"{flag} must be"))
    _add(Case(f"{flag} 1e309", _train(flag, "1e309"), flag))
for args, message in (
    (("--start-lr", "nan"), "--start-lr"),
    (("--start-lr", "-1"), "--start-lr"),
    (("--end-lr", "inf"), "--end-lr"),
    (("--num-iter", "0"), "--num-iter"),
    (("--num-iter", "-5"), "--num-iter"),
):
    _add(
        Case(
            f"lr-find {' '.join(args)}",
            _cmd("lr-find", "--no-progress", "--data", "{w}/tree", "--out", "{here}/lr.png", *args),
            message,
        )
    )
_add(
    Case(
        "predict --batch-size 0",
        _cmd("predict", "{w}/done", "{w}/img/good.png", "--batch-size", "0"),
        "--batch-size must be >= 1",
    )
)
_add(
    Case("predict --top-k -1", _cmd("predict", "{w}/done", "{w}/img/good.png", "--top-k", "-1"), "--top-k must be >= 1")
)
_add(Case("samples --count 0", _data("{w}/tree", "--count", "0"), "--count must be >= 1"))
_add(Case("samples --count 1e309", _data("{w}/tree", "--count", "1e309"), "--count"))
for args in (
    ("--trials", "0", "--space", "{w}/space_ok.toml"),
    ("--jobs", "0", "--space", "{w}/space_ok.toml", "--trials", "1"),
    ("--val-split", "nan", "--space", "{w}/space_ok.toml", "--trials", "1"),
    ("--heartbeat-interval", "-1", "--space", "{w}/space_ok.toml", "--trials", "1"),
    ("--grace-period", "-1", "--space", "{w}/space_ok.toml", "--trials", "1"),
    ("--seed", "-1", "--space", "{w}/space_ok.toml", "--trials", "1"),
):
    _add(
        Case(
            f"sweep {' '.join(args[:2])}",
            _cmd("sweep", "--data", "{w}/tree", "--sweep-dir", "{here}/sw", "--val-split", "0.2", *args),
            args[0],
        )
    )

# Writers: --out of each command onto a run's file, a folder, a missing folder, a symlink.
_OUTS = {
    "a run's config.json": ("{w}/done/config.json", "config.json"),
    "a folder": ("{here}", "folder"),
    "a missing folder": ("{here}/no/x.png", "does not exist"),
    "a symlink to a run's file": ("{w}/links/to_config.png", "config.json"),
    "a run's checkpoint folder via a link": ("{w}/links/to_checkpoints/x.png", "checkpoints"),
}
_WRITERS = {
    "evaluate": lambda out: _cmd("evaluate", "{w}/done", "--out", out),
    "samples": lambda out: _cmd("samples", "--data", "{w}/tree", "--count", "4", "--out", out),
    "export": lambda out: _cmd("export", "{w}/done", "--format", "torchscript", "--out", out),
    "lr-find": lambda out: _cmd("lr-find", "--no-progress", "--data", "{w}/tree", "--num-iter", "5", "--out", out),
}


def _dangling(argv: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    """``argv`` with ``{here}/dangling.png`` a symlink to a missing file of the world: the output
    replaces the link (an atomic write renames onto the name), never creates the link's target."""

    def made(w: Path, here: Path) -> list[str]:
        (here / "dangling.png").symlink_to(w / "nowhere" / "x.png")
        return argv(w, here)

    return made


for command, argv in _WRITERS.items():
    for label, (out, message) in _OUTS.items():
        _add(Case(f"{command} --out onto {label}", argv(out), message))
    dangling = _dangling(argv("{here}/dangling.png"))
    _add(Case(f"{command} --out onto a dangling symlink", dangling, "", status=0, lines=0, writes="dangling.png"))


def _lr_find_into_run(w: Path, here: Path) -> list[str]:
    """lr-find into a copy of a finished run: its plot is the one file it may add there."""
    shutil.copytree(w / "done", here / "run")
    return ["lr-find", "--no-progress", "--data", str(w / "tree"), "--num-iter", "5", "--run-dir", str(here / "run")]


_add(Case("lr-find --run-dir onto a finished run", _lr_find_into_run, "", status=0, writes="run/lr_finder.png"))
for label, target, extra, message in (
    ("/", "/", ("--overwrite",), "refusing to write a run into /;"),
    ("home", "{here}", ("--overwrite",), "refusing to write a run into"),
    ("a file", "{w}/afile", (), "afile"),
    ("a folder of other files", "{w}/nonrun", (), "nonrun"),
    ("a folder of other files, --overwrite", "{w}/nonrun", ("--overwrite",), "notes.txt"),
    ("a symlink to a run's checkpoints", "{w}/links/to_checkpoints", (), "checkpoints"),
):
    _add(
        Case(
            f"--run-dir onto {label}",
            _cmd("train", "--no-progress", "--data", "{w}/tree", "--run-dir", target, *extra),
            message,
        )
    )
_add(
    Case(
        "export of a folder that is no run", _cmd("export", "{w}/nonrun", "--format", "onnx"), "neither a run directory"
    )
)
_add(Case("export of a missing path", _cmd("export", "{w}/nowhere", "--format", "onnx"), "nowhere"))
_add(
    Case(
        "export with --data of a damaged data file",
        _cmd("export", "{w}/done", "--format", "onnx", "--out", "{here}/m.onnx", "--data", "{w}/damaged.mlpdata"),
        "damaged data file",
    )
)
_add(
    Case(
        "evaluate --data of a payload",
        _cmd("evaluate", "{w}/done", "--data", "{w}/cifar", "--out", "{here}/cm.png"),
        "refused",
    )
)


ALL_CASES = CASES + HOSTILE_CASES + CUDA_CASES


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder``, with a file's size and modification time: what a write changes.
    A folder counts by its presence only: its time changes when a command takes the run's lock
    (a file it removes again), which writes nothing. (Symlinks to folders are not followed.)"""
    found: dict[str, tuple[int, int]] = {}
    pending = [(str(folder), "")]
    while pending:
        top, prefix = pending.pop()
        with os.scandir(top) as entries:
            for entry in entries:
                name = prefix + entry.name
                found[name] = (0, 0)
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, name + "/"))
                elif entry.is_file():
                    stat = entry.stat()
                    found[name] = (stat.st_size, stat.st_mtime_ns)
    return found


@dataclass
class Surroundings:
    """What lies outside every case's own folder: the shared world, the folder holding the
    cases' folders, and the folder above the world (where a link leading out would land)."""

    world: Path
    cases: Path

    def __post_init__(self) -> None:
        self.seen = self.look()

    def markers(self) -> list[Path]:
        """Files that exist only if a case did what it must not: ran a crafted pickle (its
        marker), wrote through a dangling link, or extracted a member outside."""
        w = self.world
        return [w / "PWNED", w / "nowhere", w.parent / "outside.png", w / "escape.png"]

    def look(self) -> tuple[dict[str, tuple[int, int]], set[str], set[str]]:
        return _snapshot(self.world), set(os.listdir(self.world.parent)), set(os.listdir(self.cases))

    def changed_by(self, here: Path, run: Callable[[], Answer]) -> Answer:
        """``run`` one case, then what it changed outside its folder ``here`` (nothing, if it
        behaved) in its answer. A marker or new path it left is removed again, so that the next
        case is judged on its own."""
        world, above, cases = self.seen
        answer = run()
        self.seen = world_after, above_after, cases_after = self.look()
        changed = sorted(p for p in world.keys() | world_after.keys() if world.get(p) != world_after.get(p))
        outside = [f"world/{p}" for p in changed]
        outside += [f"../{name}" for name in sorted(above ^ above_after)]
        outside += [f"cases/{name}" for name in sorted((cases ^ cases_after) - {here.name})]
        outside += [str(m) for m in (*self.markers(), here / "PWNED") if m.exists() or m.is_symlink()]
        if outside:
            for new in [*(self.world / p for p in world_after.keys() - world.keys()), *self.markers()]:
                if new.is_symlink() or new.is_file():
                    new.unlink()
                elif new.is_dir():
                    shutil.rmtree(new)
            self.seen = self.look()
        answer.outside = outside
        return answer


def _environment(case: Case, world: Path, here: Path) -> dict[str, str]:
    """The case's environment: its own folder for home, caches and temporary files."""
    pythonpath = [str(world / case.extra_path)] if case.extra_path else []
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*pythonpath, str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HOME": str(here),
        "TMPDIR": str(here),
        "XDG_CACHE_HOME": str(here / ".cache"),
        "IGNITE_MLP_CACHE": str(here / "cache"),
        **case.env,
    }


@dataclass
class Answer:
    status: int
    stderr: str
    folder: Path
    stdout: str = ""
    outside: list[str] = field(default_factory=list)  # what the case changed outside its folder


def run_fresh(case: Case, world: Path, here: Path) -> Answer:
    """``python -m ignite_mlp ...`` in a new interpreter, run from the case's folder."""
    here.mkdir(parents=True)
    argv = [sys.executable, "-m", "ignite_mlp", *case.argv(world, here)]
    env = _environment(case, world, here)
    done = subprocess.run(argv, cwd=here, env=env, capture_output=True, text=True, timeout=300)
    return Answer(done.returncode, done.stderr, here, done.stdout)


class Forker:
    """A process that imported torch once and forks one child per case (see tests/cli_forker.py):
    the same command, run from its own folder, at a fraction of the cost."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.log = log  # the forker's own stderr (each case's goes to the case's folder)
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "cli_forker.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                text=True,
            )

    def run(self, case: Case, world: Path, here: Path) -> Answer:
        here.mkdir(parents=True)
        request = {
            "argv": case.argv(world, here),
            "cwd": str(here),
            "env": _environment(case, world, here),
            "path": [str(world / case.extra_path)] if case.extra_path else [],
            "stdout": str(here / "stdout"),
            "stderr": str(here / "stderr"),
        }
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:  # the forker itself ended: say how, and which case it was given
            status = self.process.wait(timeout=60)
            raise RuntimeError(f"the forker ended (exit {status}) on {case.name!r}: {self.log.read_text()[-3000:]}")
        return Answer(json.loads(line)["status"], (here / "stderr").read_text(), here, (here / "stdout").read_text())

    def close(self) -> None:
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:  # it ended already (run() said how)
            pass
        self.process.wait(timeout=120)


def tour_of(world: Path, forker: Forker, cases: list[Case]) -> dict[str, Answer]:
    """Run the cases in the built ``world`` one at a time, each in a folder of its own, so that a
    change outside that folder is the doing of the case that ran: each answer says what its case
    changed there."""
    surroundings = Surroundings(world, world.parent / "cases")
    assert [m for m in surroundings.markers() if m.exists()] == [], "the world was built with a marker in it"
    answers = {}
    for i, case in enumerate(cases):
        here = surroundings.cases / f"{i:03d}"
        run = run_fresh if case.fresh else forker.run
        answers[case.name] = surroundings.changed_by(here, functools.partial(run, case, world, here))
    return answers


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Answer]:
    """Every case's answer. The cases are dealt to two worlds, each toured in a thread of its own,
    so that two cores work; the second takes the few cases run in a new interpreter (the slow
    ones) and every third forked case, which about evens the two. Each world has its own forker
    (started first: it imports torch while the worlds are built). The worlds are built one after
    the other, here: building trains runs in this process, and two trainings in two threads of
    one process share torch's global state, which no user's run does."""
    forked = [c for c in ALL_CASES if not c.fresh]
    shares = [
        [c for i, c in enumerate(forked) if i % 3],
        [c for c in ALL_CASES if c.fresh] + forked[::3],
    ]
    worlds = [tmp_path_factory.mktemp(f"tour{i}") / "world" for i in range(len(shares))]
    forkers = [Forker(world.parent / "forker.log") for world in worlds]
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("IGNITE_MLP_CACHE", str(tmp_path_factory.mktemp("world-cache")))  # the worlds' own runs
            for world in worlds:
                world.mkdir()
                (world.parent / "cases").mkdir()
                build_world(world)
        with ThreadPoolExecutor(max_workers=len(shares)) as pool:
            tours = [pool.submit(tour_of, *job) for job in zip(worlds, forkers, shares, strict=True)]
            answers = {name: answer for done in tours for name, answer in done.result().items()}
    finally:
        for forker in forkers:
            forker.close()
    assert len(answers) == len(ALL_CASES)
    return answers


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_exit_2(case: Case, tour: dict[str, Answer]) -> None:
    answer = tour[case.name]
    err = answer.stderr
    assert answer.status == case.status, (answer.status, err)
    if case.status == 2:
        assert err.count("\n") == case.lines and err.endswith("\n"), err
    assert "Traceback" not in err and case.message in err, err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err, err  # never advised
    if case.writes:
        assert (answer.folder / case.writes).is_file()
    assert case.shows in answer.stdout, answer.stdout
    assert not case.hides or case.hides not in answer.stdout, answer.stdout
    # Nothing of the shared world, the other cases or the folder above changed, no crafted pickle
    # ran (its marker), nothing was written through a dangling link or extracted outside.
    assert answer.outside == [], f"{case.name!r} wrote or changed outside its folder"
