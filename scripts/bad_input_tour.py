"""A tour of bad inputs: each is given to `ignite-mlp`, which must answer with one line and exit 2.

    python scripts/bad_input_tour.py

Everything happens in a temporary folder, on a tiny generated data set (no download needed).
"""

import contextlib
import io
import os
import pickle
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ignite_mlp.cli import main

root = Path(tempfile.mkdtemp(prefix="bad-input-tour-"))
os.environ["IGNITE_MLP_CACHE"] = str(root / "cache")


def make_tree(folder: Path, size: int = 8) -> Path:
    """3 classes of size x size PNG images, 12 for training and 4 for validation each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for k, cls in enumerate(("ant", "bee", "cat")):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(40 + 80 * k, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / split / cls / f"{i:04d}.png")
    return folder


tree = make_tree(root / "tree")


def run(label: str, argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    print(f"- {label}: exit {code}: `{err.getvalue().strip()}`")


(root / "empty").mkdir()
(root / "notgz.tar.gz").write_text("plain text")
for name in ("t_empty", "t_corrupt", "t_trunc", "t_mismatch"):
    shutil.copytree(tree, root / name)
for f in (root / "t_empty" / "test" / "cat").iterdir():
    f.unlink()
(root / "t_corrupt" / "train" / "bee" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
victim = root / "t_trunc" / "train" / "ant" / "0001.png"
victim.write_bytes(victim.read_bytes()[:60])
(root / "t_mismatch" / "test" / "cat").rename(root / "t_mismatch" / "test" / "dog")
(root / "afile").write_text("x")
base = ["train", "--no-progress", "--run-dir", str(root / "r")]
run("missing data path", [*base, "--data", str(root / "missing"), "--no-download"])
run("empty data folder, offline", [*base, "--data", str(root / "empty")])
run("empty class folder", [*base, "--data", str(root / "t_empty")])
run("corrupt image", [*base, "--data", str(root / "t_corrupt")])
run("truncated image", [*base, "--data", str(root / "t_trunc")])
run("different classes in train/ and test/", [*base, "--data", str(root / "t_mismatch")])
run("not a gzip tarball", [*base, "--data", str(root / "notgz.tar.gz")])
run("hidden sizes empty", [*base, "--hidden-sizes"])
run("hidden sizes zero", [*base, "--hidden-sizes", "0"])
run("hidden sizes negative", [*base, "--hidden-sizes", "-5"])
run("hidden sizes not integers", [*base, "--hidden-sizes", "wide"])
run("lr <= 0", [*base, "--lr", "0"])
run("batch size 0", [*base, "--batch-size", "0"])
run("epochs 0", [*base, "--epochs", "0"])
run("seed below 0", [*base, "--seed", "-1"])
run("seed of 2**32", [*base, "--seed", str(2**32)])
run("Nesterov without momentum", [*base, "--recipe", "strong", "--momentum", "0"])
run("infinite learning rate", [*base, "--lr", "inf"])
run("infinite std", [*base, "--std", "0.5", "inf", "0.5"])
run("crop padding the images cannot hold", [*base, "--data", str(tree), "--augment", "crop", "--crop-padding", "8"])
run("unknown device", [*base, "--device", "tpu"])
run("CUDA without one", [*base, "--device", "cuda", "--data", str(tree)])
run(
    "unwritable run directory",
    ["train", "--no-progress", "--data", str(tree), "--run-dir", str(root / "afile" / "run")],
)
with contextlib.redirect_stdout(io.StringIO()):
    main(["train", "--no-progress", "--data", str(tree), "--run-dir", str(root / "done"), "--epochs", "1"])
run(
    "run directory already holds a run",
    ["train", "--no-progress", "--data", str(tree), "--run-dir", str(root / "done")],
)
run(
    "resume with a different architecture",
    ["train", "--no-progress", "--resume", str(root / "done"), "--epochs", "2", "--hidden-sizes", "64"],
)
last = next((root / "done" / "checkpoints").glob("last_*.pt"))
good = last.read_bytes()
last.write_bytes(good[:200])
run("corrupt checkpoint", ["train", "--no-progress", "--resume", str(root / "done"), "--epochs", "2"])


class Payload:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __reduce__(self):
        return (open, (str(root / "PWNED"), "w"))


torch.save({"model": Payload()}, last)
run(
    "checkpoint needing arbitrary unpickling",
    ["train", "--no-progress", "--resume", str(root / "done"), "--epochs", "2"],
)
print("  payload ran:", (root / "PWNED").exists())
last.write_bytes(good)
run(
    "resume that changes the batch size",
    ["train", "--no-progress", "--resume", str(root / "done"), "--batch-size", "4"],
)
run(
    "resume that changes the activation",
    ["train", "--no-progress", "--resume", str(root / "done"), "--epochs", "2", "--activation", "gelu"],
)
run("resume of a finished run", ["train", "--no-progress", "--resume", str(root / "done")])
run("handler spec that does not import", [*base, "--handler", "no_such_module:attach"])
(root / "negated.toml").write_text("no-progress = true\n")
run("switch written as no-progress in run.toml", [*base, "--config", str(root / "negated.toml")])
(root / "twice.toml").write_text('handler = ["a:attach"]\nhandlers = ["b:attach"]\n')
run("handler and handlers both in run.toml", [*base, "--config", str(root / "twice.toml")])
(root / "auto.toml").write_text('resume = "auto"\n')
here = os.getcwd()
os.chdir(root)  # resume = "auto" looks in ./runs/: here, none
run('resume = "auto" in run.toml, nothing to resume', ["train", "--config", str(root / "auto.toml")])
os.chdir(here)
shutil.copytree(tree, root / "t_renamed")
make_tree(root / "t_small", size=4)
for split in ("train", "test"):
    (root / "t_renamed" / split / "cat").rename(root / "t_renamed" / split / "dog")
run("evaluate on data with other class names", ["evaluate", str(root / "done"), "--data", str(root / "t_renamed")])
run("evaluate on images of another shape", ["evaluate", str(root / "done"), "--data", str(root / "t_small")])
run("evaluate on an unknown device", ["evaluate", str(root / "done"), "--device", "tpu"])
run("samples with seed below 0", ["samples", "--data", str(tree), "--seed", "-1", "--out", str(root / "s.png")])
run("unknown whitening", [*base, "--whiten", "pca2"])
run("negative whitening regulariser", [*base, "--whiten", "zca", "--whiten-regularizer", "-1"])
run("EMA momentum of 1", [*base, "--ema-momentum", "1"])
run("negative MixUp parameter", [*base, "--mixup", "-0.2"])
run("unknown optimizer", [*base, "--optimizer", "lion"])
run("exact ZCA of too few images", [*base, "--data", str(tree), "--whiten", "zca", "--whiten-regularizer", "0"])
with contextlib.redirect_stdout(io.StringIO()):
    main(
        [
            "train",
            "--no-progress",
            "--data",
            str(tree),
            "--run-dir",
            str(root / "white"),
            "--epochs",
            "1",
            "--whiten",
            "zca",
        ]
    )
(root / "white" / "whitening.pt").write_bytes(b"garbage")
run("evaluate a whitened run whose whitening.pt is corrupt", ["evaluate", str(root / "white")])
(root / "white" / "whitening.pt").unlink()
run("evaluate a whitened run without its whitening.pt", ["evaluate", str(root / "white")])
run("resume of a missing run", ["train", "--resume", str(root / "nope")])
run("--lr neither a number nor auto", [*base, "--lr", "fast"])
run("--lr auto on a resumed run", ["train", "--resume", str(root / "done"), "--epochs", "2", "--lr", "auto"])
run("lr-find with start above end", ["lr-find", "--data", str(tree), "--start-lr", "1", "--end-lr", "0.1"])
run("predict with a folder that is no run", ["predict", str(root / "empty"), str(tree)])
run("predict, nothing readable", ["predict", str(root / "done"), str(root / "notgz.tar.gz"), str(root / "afile")])
run("predict --top-k 0", ["predict", str(root / "done"), str(tree), "--top-k", "0"])
run("export to a missing folder", ["export", str(root / "done"), "--format", "onnx", "--out", str(root / "no/m.onnx")])
sys.modules["onnxruntime"] = None  # as if the export extra were not installed
run("export --format onnx without the export extra", ["export", str(root / "done"), "--format", "onnx"])
run("unknown progress mode", [*base, "--progress", "sometimes"])
run("unknown precision", [*base, "--precision", "fp16"])

# Data files that try to run code, or to exhaust memory.
cifar = root / "cifar" / "cifar-10-batches-py"
cifar.mkdir(parents=True)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1]}
    (cifar / name).write_bytes(pickle.dumps(Payload() if name == "data_batch_1" else batch))
(cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
run("CIFAR-10 batch that would run code", [*base, "--data", str(root / "cifar")])
print("  payload ran:", (root / "PWNED").exists())
shutil.copytree(tree, root / "t_bomb")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# A PNG declaring 40000x40000 pixels: 4.8 GB once decoded, 45 bytes on disk.
ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
(root / "t_bomb" / "train" / "ant" / "0003.png").write_bytes(
    b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
)
run("image declaring 40000x40000 pixels", [*base, "--data", str(root / "t_bomb")])
shutil.copytree(tree, root / "t_huge")
with open(root / "t_huge" / "test" / "bee" / "0002.png", "r+b") as f:
    f.truncate(100 * 2**20)  # 100 MB (sparse: nothing is written)
run("image file of 100 MB", [*base, "--data", str(root / "t_huge")])
bad_file = root / "damaged.mlpdata"
bad_file.write_bytes(b"IGNITE-MLP-DATA1" + bytes(100))
run("damaged data file", [*base, "--data", str(bad_file)])
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    code = main(["train", *base[1:], "--data", str(tree), "--cache-dir", str(root / "afile" / "cache"), "--dry-run"])
print(f"- unusable cache folder (the run goes on): exit {code}: `{err.getvalue().strip()}`")
shutil.rmtree(root)
