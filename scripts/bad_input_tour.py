"""A tour of bad inputs: each is given to `ignite-mlp`, which must answer with one line and exit 2.

    python scripts/bad_input_tour.py

Everything happens in a temporary folder, on a tiny generated data set (no download needed).
"""

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ignite_mlp.cli import main

root = Path(tempfile.mkdtemp(prefix="bad-input-tour-"))
os.environ["IGNITE_MLP_CACHE"] = str(root / "cache")


def make_tree(folder: Path) -> Path:
    """3 classes of 8x8 PNG images, 12 for training and 4 for validation each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for k, cls in enumerate(("ant", "bee", "cat")):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(40 + 80 * k, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
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
run("handler spec that does not import", [*base, "--handler", "no_such_module:attach"])
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
shutil.rmtree(root)
